import { FormEvent, useCallback, useEffect, useMemo, useState } from 'react'
import { api, ApiError, describe, fmt, Summary } from './api'
import { BillingPage } from './Billing'
import { ChatPage } from './Chat'

const TOKEN_KEY = 'pg_billing.token'

/** A tiny router: the path decides the page; links push history. */
function usePath(): [string, (to: string) => void] {
  const [path, setPath] = useState(window.location.pathname + window.location.search)
  useEffect(() => {
    const onPop = () => setPath(window.location.pathname + window.location.search)
    window.addEventListener('popstate', onPop)
    return () => window.removeEventListener('popstate', onPop)
  }, [])
  const go = useCallback((to: string) => {
    window.history.pushState(null, '', to)
    setPath(to)
  }, [])
  return [path, go]
}

export function App() {
  const [token, setToken] = useState<string | null>(() => {
    // `make web` opens the app with #token=<a demo user's JWT>
    const fromHash = new URLSearchParams(window.location.hash.slice(1)).get('token')
    if (fromHash) {
      localStorage.setItem(TOKEN_KEY, fromHash)
      window.history.replaceState(null, '', window.location.pathname + window.location.search)
    }
    return fromHash ?? localStorage.getItem(TOKEN_KEY)
  })
  if (!token) return <SignIn onToken={(t) => (localStorage.setItem(TOKEN_KEY, t), setToken(t))} />
  return <SignedIn token={token} onSignOut={() => (localStorage.removeItem(TOKEN_KEY), setToken(null))} />
}

function SignIn({ onToken }: { onToken: (t: string) => void }) {
  const [value, setValue] = useState('')
  const submit = (e: FormEvent) => {
    e.preventDefault()
    if (value.trim()) onToken(value.trim())
  }
  return (
    <main className="signin">
      <h1>Sign in</h1>
      <form onSubmit={submit}>
        <label htmlFor="token">Access token (your Supabase session's JWT)</label>
        <textarea id="token" rows={4} value={value} onChange={(e) => setValue(e.target.value)} required />
        <button type="submit">Sign in</button>
      </form>
    </main>
  )
}

function SignedIn({ token, onSignOut }: { token: string; onSignOut: () => void }) {
  const client = useMemo(() => api(token), [token])
  const [path, go] = usePath()
  const [summary, setSummary] = useState<Summary | null>(null)
  const [error, setError] = useState<string | null>(null)
  const [sessionExpired, setSessionExpired] = useState(false)
  const refresh = useCallback(async () => {
    try {
      const s = await client.summary()
      setSummary(s)
      setError(null)
      return s
    } catch (e) {
      setError(describe(e))
      setSessionExpired(e instanceof ApiError && e.status === 401)
      return null
    }
  }, [client])
  useEffect(() => {
    void refresh()
  }, [refresh])

  const link = (to: string, label: string) => (
    <a
      href={to}
      aria-current={path.split('?')[0] === to ? 'page' : undefined}
      onClick={(e) => {
        e.preventDefault()
        go(to)
      }}
    >
      {label}
    </a>
  )
  return (
    <div className="layout">
      <aside className="sidebar">
        <nav aria-label="Main">
          {link('/', 'Chat')}
          {link('/billing', 'Billing')}
        </nav>
        <section className="balance-widget" aria-labelledby="balance-heading">
          <h2 id="balance-heading">Tokens</h2>
          <p className="balance" data-testid="sidebar-balance" aria-live="polite">
            {summary ? fmt(summary.balance) : '…'}
          </p>
          {summary && summary.reserved > 0 && <p className="muted">{fmt(summary.reserved)} held by running requests</p>}
          {summary && summary.debt > 0 && <p className="warn">{fmt(summary.debt)} owed</p>}
          {link('/billing', 'Buy tokens')}
        </section>
        <button type="button" className="link" onClick={onSignOut}>
          Sign out
        </button>
      </aside>
      <main className="content">
        {error && (
          <div role="alert" className="error">
            <p>{error}</p>
            {sessionExpired && <button type="button" onClick={onSignOut}>Sign in again</button>}
          </div>
        )}
        {path.startsWith('/billing') ? (
          <BillingPage client={client} summary={summary} refresh={refresh} search={path.split('?')[1] ?? ''} />
        ) : (
          <ChatPage client={client} refresh={refresh} go={go} />
        )}
      </main>
    </div>
  )
}

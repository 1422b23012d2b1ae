import { FormEvent, ReactNode, useCallback, useEffect, useRef, useState } from 'react'
import { Api, Catalog, date, describe, fmt, GrantRow, money, PaymentRow, Summary, UsageRow } from './api'
import { UsageChart } from './UsageChart'

const PAGE = 10

type Props = { client: Api; summary: Summary | null; refresh: () => Promise<Summary | null>; search: string }

export function BillingPage({ client, summary, refresh, search }: Props) {
  const checkout = new URLSearchParams(search).get('checkout')
  useEffect(() => {
    void refresh() // the plan or balance may have changed since the app loaded (a webhook, another tab)
  }, [refresh])
  return (
    <>
      <h1>Billing</h1>
      {checkout === 'success' && <CheckoutReturn summary={summary} refresh={refresh} />}
      {checkout === 'cancel' && <p role="status" className="notice">Checkout was cancelled: nothing was charged.</p>}
      <BalanceSection summary={summary} />
      <PlanSection client={client} summary={summary} />
      <BuySection client={client} />
      <PromoSection client={client} refresh={refresh} />
      <UsageSection client={client} />
      <PaymentHistory client={client} />
      <GrantHistory client={client} />
    </>
  )
}

/** Back from Stripe Checkout: the webhook may land after the redirect, so poll until the balance moves. */
function CheckoutReturn({ summary, refresh }: { summary: Summary | null; refresh: () => Promise<Summary | null> }) {
  const start = useRef<number | null>(null)
  const [arrived, setArrived] = useState(false)
  useEffect(() => {
    if (summary && start.current === null) start.current = summary.balance
  }, [summary])
  useEffect(() => {
    if (arrived) return
    let tries = 0
    const timer = window.setInterval(async () => {
      const s = await refresh()
      if (s && start.current !== null && s.balance !== start.current) setArrived(true)
      if (++tries >= 60) window.clearInterval(timer)
    }, 1000)
    return () => window.clearInterval(timer)
  }, [arrived, refresh])
  return (
    <p role="status" className="notice">
      {arrived ? 'Payment received: your tokens are in your balance.' : 'Payment received. Your tokens appear as soon as Stripe confirms it…'}
    </p>
  )
}

function Section({ id, title, children }: { id: string; title: string; children: ReactNode }) {
  return (
    <section aria-labelledby={id} className="card">
      <h2 id={id}>{title}</h2>
      {children}
    </section>
  )
}

function BalanceSection({ summary }: { summary: Summary | null }) {
  if (!summary) return <Section id="balance" title="Balance"><p>Loading…</p></Section>
  return (
    <Section id="balance" title="Balance">
      <dl className="figures">
        <div><dt>Spendable</dt><dd data-testid="spendable">{fmt(summary.balance)}</dd></div>
        <div><dt>Held by running requests</dt><dd>{fmt(summary.reserved)}</dd></div>
        <div><dt>Owed</dt><dd>{fmt(summary.debt)}</dd></div>
      </dl>
      {summary.breakdown.length > 0 && (
        <table>
          <caption>What expires when</caption>
          <thead><tr><th scope="col">Tokens</th><th scope="col">From</th><th scope="col">Expires</th></tr></thead>
          <tbody>
            {summary.breakdown.map((b) => (
              <tr key={`${b.kind}-${b.expires_at}`}>
                <td>{fmt(b.tokens)}</td><td>{b.kind}</td><td>{date(b.expires_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Section>
  )
}

function PlanSection({ client, summary }: { client: Api; summary: Summary | null }) {
  const [error, setError] = useState<string | null>(null)
  const sub = summary?.subscription
  const manage = async () => {
    setError(null)
    try {
      window.location.assign((await client.portal()).url)
    } catch (e) {
      setError(describe(e))
    }
  }
  return (
    <Section id="plan" title="Plan">
      {sub ? (
        <p>
          <strong>{sub.plan_name || sub.plan || 'Subscription'}</strong> — {sub.status}
          {sub.renews_at && <>, renews on {date(sub.renews_at)}</>}
          {sub.cancel_at_period_end && <>, ends on {date(sub.current_period_end)}</>}
        </p>
      ) : (
        <p>No plan: you pay as you go with token packs.</p>
      )}
      <button type="button" onClick={manage}>Manage billing</button>
      {error && <p role="alert" className="error">{error}</p>}
    </Section>
  )
}

function BuySection({ client }: { client: Api }) {
  const [catalog, setCatalog] = useState<Catalog | null>(null)
  const [error, setError] = useState<string | null>(null)
  useEffect(() => {
    client.catalog().then(setCatalog, (e) => setError(describe(e)))
  }, [client])
  const buy = async (priceId: string) => {
    setError(null)
    try {
      window.location.assign((await client.checkout(priceId)).url)
    } catch (e) {
      setError(describe(e))
    }
  }
  return (
    <Section id="buy" title="Buy tokens">
      <ul className="offers">
        {catalog?.packs.map((p) => (
          <li key={p.price_id}>
            <button type="button" onClick={() => buy(p.price_id)}>
              Buy {fmt(p.tokens)} tokens for {money(p.price_amount, p.currency)}
            </button>
          </li>
        ))}
        {catalog?.plans.map((p) => (
          <li key={p.price_id}>
            <button type="button" onClick={() => buy(p.price_id)}>
              Subscribe to {p.name || p.code}: {fmt(p.tokens_per_period)} tokens a month for {money(p.price_amount, p.currency)}
            </button>
          </li>
        ))}
      </ul>
      {error && <p role="alert" className="error">{error}</p>}
    </Section>
  )
}

function PromoSection({ client, refresh }: { client: Api; refresh: () => Promise<Summary | null> }) {
  const [code, setCode] = useState('')
  const [result, setResult] = useState<{ ok: boolean; text: string } | null>(null)
  const submit = async (e: FormEvent) => {
    e.preventDefault()
    setResult(null)
    try {
      const r = await client.redeem(code)
      setResult({ ok: true, text: `Added ${fmt(r.tokens)} tokens.` })
      setCode('')
      void refresh()
    } catch (err) {
      setResult({ ok: false, text: describe(err) })
    }
  }
  return (
    <Section id="promo" title="Redeem a promo code">
      <form onSubmit={submit} className="inline">
        <label htmlFor="promo-code">Promo code</label>
        <input id="promo-code" value={code} onChange={(e) => setCode(e.target.value)} autoComplete="off" required maxLength={64} />
        <button type="submit">Redeem</button>
      </form>
      {result && <p role={result.ok ? 'status' : 'alert'} className={result.ok ? 'notice' : 'error'}>{result.text}</p>}
    </Section>
  )
}

function UsageSection({ client }: { client: Api }) {
  const [rows, setRows] = useState<UsageRow[] | null>(null)
  const [error, setError] = useState<string | null>(null)
  useEffect(() => {
    client.usage(30).then(setRows, (e) => setError(describe(e)))
  }, [client])
  return (
    <Section id="usage" title="Usage, last 30 days">
      {error ? <p role="alert" className="error">{error}</p> : rows ? <UsageChart rows={rows} days={30} /> : <p>Loading…</p>}
    </Section>
  )
}

/** A table read page by page (PAGE rows); "Next" is off once a page comes back short. */
function usePaged<T>(load: (limit: number, offset: number) => Promise<T[]>) {
  const [page, setPage] = useState(0)
  const [rows, setRows] = useState<T[] | null>(null)
  const [error, setError] = useState<string | null>(null)
  const reload = useCallback(() => {
    load(PAGE, page * PAGE).then(setRows, (e) => setError(describe(e)))
  }, [load, page])
  useEffect(reload, [reload])
  const pager = (label: string) => (
    <nav aria-label={`${label} pages`} className="pager">
      <button type="button" disabled={page === 0} onClick={() => setPage(page - 1)}>Previous</button>
      <span>Page {page + 1}</span>
      <button type="button" disabled={!rows || rows.length < PAGE} onClick={() => setPage(page + 1)}>Next</button>
    </nav>
  )
  return { rows, error, pager }
}

function PaymentHistory({ client }: { client: Api }) {
  const { rows, error, pager } = usePaged<PaymentRow>(client.payments)
  return (
    <Section id="payments" title="Payments">
      {error && <p role="alert" className="error">{error}</p>}
      {rows && rows.length === 0 ? <p>No payments yet.</p> : (
        <table>
          <thead>
            <tr><th scope="col">Date</th><th scope="col">What</th><th scope="col">Amount</th><th scope="col">Tokens</th><th scope="col">Invoice</th></tr>
          </thead>
          <tbody>
            {rows?.map((p) => (
              <tr key={p.event_id}>
                <td>{date(p.event_created)}</td>
                <td>{p.event_type}{p.action ? ` (${p.action.replace(/_/g, ' ')})` : ''}</td>
                <td>{money(p.amount, p.currency)}</td>
                <td>{p.tokens === null ? '' : fmt(p.tokens)}</td>
                <td>
                  {p.hosted_invoice_url && <a href={p.hosted_invoice_url} target="_blank" rel="noreferrer">View invoice</a>}
                  {p.invoice_pdf && <> · <a href={p.invoice_pdf} target="_blank" rel="noreferrer">PDF</a></>}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {pager('Payments')}
    </Section>
  )
}

function GrantHistory({ client }: { client: Api }) {
  const { rows, error, pager } = usePaged<GrantRow>(client.grants)
  return (
    <Section id="grants" title="Tokens received">
      {error && <p role="alert" className="error">{error}</p>}
      {rows && rows.length === 0 ? <p>No tokens received yet.</p> : (
        <table>
          <thead>
            <tr><th scope="col">Date</th><th scope="col">From</th><th scope="col">Tokens</th><th scope="col">Left</th><th scope="col">Expires</th></tr>
          </thead>
          <tbody>
            {rows?.map((g) => (
              <tr key={g.grant_id}>
                <td>{date(g.created_at)}</td><td>{g.kind}</td><td>{fmt(g.tokens)}</td><td>{fmt(g.remaining)}</td><td>{date(g.expires_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {pager('Tokens received')}
    </Section>
  )
}

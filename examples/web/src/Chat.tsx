import { FormEvent, useState } from 'react'
import { Api, ApiError, describe, Summary } from './api'

type Message = { role: 'you' | 'assistant'; text: string }

export function ChatPage({ client, refresh, go }: { client: Api; refresh: () => Promise<Summary | null>; go: (to: string) => void }) {
  const [prompt, setPrompt] = useState('')
  const [messages, setMessages] = useState<Message[]>([])
  const [busy, setBusy] = useState(false)
  const [problem, setProblem] = useState<{ text: string; outOfTokens: boolean } | null>(null)

  const send = async (e: FormEvent) => {
    e.preventDefault()
    if (!prompt.trim() || busy) return
    const text = prompt.trim()
    setBusy(true)
    setProblem(null)
    setMessages((m) => [...m, { role: 'you', text }])
    try {
      const res = await client.chat(text, 'echo-1')
      setPrompt('')
      setMessages((m) => [...m, { role: 'assistant', text: '' }])
      const reader = res.body!.getReader()
      const decoder = new TextDecoder()
      for (;;) {
        const { done, value } = await reader.read()
        if (done) break
        const chunk = decoder.decode(value, { stream: true })
        setMessages((m) => [...m.slice(0, -1), { role: 'assistant', text: m[m.length - 1].text + chunk }])
      }
    } catch (err) {
      setProblem({ text: describe(err), outOfTokens: err instanceof ApiError && err.code === 'PT402' })
    } finally {
      setBusy(false)
      void refresh() // the reply was charged (or its hold released): the sidebar shows the new balance
    }
  }

  return (
    <section aria-labelledby="chat-heading">
      <h1 id="chat-heading">Chat</h1>
      <ol className="messages" aria-live="polite" aria-label="Conversation">
        {messages.map((m, i) => (
          <li key={i} className={m.role}>
            <span className="who">{m.role === 'you' ? 'You' : 'Assistant'}</span> {m.text}
          </li>
        ))}
      </ol>
      {problem && (
        <div role="alert" className="error">
          <p>{problem.text}</p>
          {problem.outOfTokens && (
            <button type="button" onClick={() => go('/billing')}>
              Buy tokens
            </button>
          )}
        </div>
      )}
      <form onSubmit={send} className="chat-form">
        <label htmlFor="prompt">Message</label>
        <textarea
          id="prompt"
          rows={3}
          value={prompt}
          onChange={(e) => setPrompt(e.target.value)}
          onKeyDown={(e) => {
            if (e.key === 'Enter' && !e.shiftKey) {
              e.preventDefault()
              e.currentTarget.form?.requestSubmit()
            }
          }}
        />
        <button type="submit" disabled={busy}>
          {busy ? 'Replying…' : 'Send'}
        </button>
      </form>
    </section>
  )
}

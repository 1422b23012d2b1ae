import { fmt, UsageRow } from './api'

const COLORS = ['#2563eb', '#16a34a', '#d97706', '#9333ea', '#dc2626', '#0891b2']

/** Credits used per UTC day, stacked by model; the same numbers follow as a table for screen readers. */
export function UsageChart({ rows, days }: { rows: UsageRow[]; days: number }) {
  const models = [...new Set(rows.map((r) => r.group ?? 'other'))].sort()
  const end = new Date()
  const dayKeys = Array.from({ length: days }, (_, i) => {
    const d = new Date(Date.UTC(end.getUTCFullYear(), end.getUTCMonth(), end.getUTCDate() - (days - 1 - i)))
    return d.toISOString().slice(0, 10)
  })
  const byDay = new Map<string, Map<string, number>>()
  for (const r of rows) {
    const day = new Date(r.bucket).toISOString().slice(0, 10)
    const m = byDay.get(day) ?? new Map<string, number>()
    m.set(r.group ?? 'other', (m.get(r.group ?? 'other') ?? 0) + r.tokens)
    byDay.set(day, m)
  }
  const max = Math.max(1, ...dayKeys.map((d) => [...(byDay.get(d)?.values() ?? [])].reduce((a, b) => a + b, 0)))
  const total = rows.reduce((a, r) => a + r.tokens, 0)
  const W = 600, H = 160, bar = W / days
  return (
    <figure className="usage-chart">
      <svg viewBox={`0 0 ${W} ${H + 20}`} role="img" aria-label={`Tokens used per day over the last ${days} days: ${fmt(total)} in total`}>
        {dayKeys.map((day, i) => {
          let y = H
          return models.map((model, k) => {
            const v = byDay.get(day)?.get(model) ?? 0
            if (!v) return null
            const h = (v / max) * H
            y -= h
            return (
              <rect key={`${day}-${model}`} x={i * bar + 1} y={y} width={bar - 2} height={h} fill={COLORS[k % COLORS.length]}>
                <title>{`${day} ${model}: ${fmt(v)}`}</title>
              </rect>
            )
          })
        })}
        <line x1="0" y1={H} x2={W} y2={H} stroke="#999" />
        <text x="0" y={H + 15} fontSize="11">{dayKeys[0]}</text>
        <text x={W} y={H + 15} fontSize="11" textAnchor="end">{dayKeys[dayKeys.length - 1]}</text>
      </svg>
      <figcaption>
        {models.length === 0
          ? 'No usage in this period.'
          : models.map((m, k) => (
              <span key={m} className="legend">
                <span className="swatch" style={{ background: COLORS[k % COLORS.length] }} aria-hidden="true" /> {m}
              </span>
            ))}
      </figcaption>
      <table className="visually-hidden">
        <caption>Tokens used per day and model</caption>
        <thead>
          <tr><th scope="col">Day (UTC)</th><th scope="col">Model</th><th scope="col">Tokens</th></tr>
        </thead>
        <tbody>
          {rows.map((r) => (
            <tr key={`${r.bucket}-${r.group}`}>
              <td>{r.bucket.slice(0, 10)}</td><td>{r.group ?? 'other'}</td><td>{fmt(r.tokens)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </figure>
  )
}

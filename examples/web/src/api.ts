// The backend's /api/* endpoints (examples/fastapi/app.py), called with the user's Supabase JWT.

export type Breakdown = { kind: string; expires_at: string | null; tokens: number }
export type Subscription = {
  plan: string | null
  plan_name: string | null
  status: string
  current_period_end: string | null
  cancel_at_period_end: boolean
  renews_at: string | null
}
export type Summary = {
  account_id: string
  balance: number
  reserved: number
  debt: number
  breakdown: Breakdown[]
  subscription: Subscription | null
}
export type Pack = { price_id: string; name: string; tokens: number; price_amount: number; currency: string }
export type Plan = Pack & { code: string; tokens_per_period: number }
export type Catalog = { packs: Pack[]; plans: Omit<Plan, 'tokens'>[] }
export type UsageRow = { bucket: string; group: string | null; tokens: number; requests: number }
export type GrantRow = {
  grant_id: number
  kind: string
  tokens: number
  remaining: number
  expires_at: string | null
  created_at: string
}
export type PaymentRow = {
  event_id: string
  event_type: string
  event_created: string
  status: string
  action: string | null
  tokens: number | null
  amount: number | null
  currency: string | null
  hosted_invoice_url: string | null
  invoice_pdf: string | null
}

/** An error from the backend, with pg_billing's SQLSTATE when the database raised it. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string | null,
    message: string,
    readonly details: string | null,
    readonly retryAfter: number | null,
  ) {
    super(message)
  }
}

export async function errorFrom(res: Response): Promise<ApiError> {
  const body = await res.json().catch(() => ({}))
  const retry = res.headers.get('Retry-After')
  const message = body.message ?? (typeof body.detail === 'string' ? body.detail : res.statusText)
  return new ApiError(res.status, body.code ?? null, message, body.details ?? null, retry ? Number(retry) : null)
}

export function api(token: string) {
  async function call<T>(path: string, init: RequestInit = {}): Promise<T> {
    const res = await fetch(path, {
      ...init,
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json', ...init.headers },
    })
    if (!res.ok) throw await errorFrom(res)
    return res.json() as Promise<T>
  }
  return {
    summary: () => call<Summary>('/api/billing/summary'),
    catalog: () => call<Catalog>('/api/billing/catalog'),
    usage: (days: number) => call<UsageRow[]>(`/api/billing/usage?bucket=day&group_by=model&days=${days}`),
    grants: (limit: number, offset: number) => call<GrantRow[]>(`/api/billing/grants?limit=${limit}&offset=${offset}`),
    payments: (limit: number, offset: number) =>
      call<PaymentRow[]>(`/api/billing/payments?limit=${limit}&offset=${offset}`),
    redeem: (code: string) =>
      call<{ tokens: number; balance_after: number }>('/api/billing/promo', {
        method: 'POST',
        body: JSON.stringify({ code }),
      }),
    checkout: (priceId: string) =>
      call<{ url: string }>('/api/payments/create-checkout', {
        method: 'POST',
        body: JSON.stringify({ price_id: priceId, quantity: 1 }),
      }),
    portal: () => call<{ url: string }>('/api/payments/portal', { method: 'POST', body: '{}' }),
    /** The streamed reply; the caller reads res.body. Errors (402, 429) are thrown as ApiError. */
    chat: async (prompt: string, model: string) => {
      const res = await fetch('/api/chat', {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ prompt, model, max_tokens: 64 }),
      })
      if (!res.ok) throw await errorFrom(res)
      return res
    },
  }
}
export type Api = ReturnType<typeof api>

/** What a user should read for each error, in words. */
export function describe(e: unknown): string {
  if (!(e instanceof ApiError)) return 'Something went wrong. Check your connection and try again.'
  switch (e.code) {
    case 'PT402': {
      const m = /requested (\d+), available (\d+)/.exec(e.details ?? '')
      if (/member limit/.test(e.details ?? '')) return 'You have reached the spend limit your team set for you.'
      return m
        ? `You're out of tokens: this needs ${fmt(Number(m[1]))} and you have ${fmt(Number(m[2]))}. Buy a pack or subscribe on the billing page.`
        : "You're out of tokens. Buy a pack or subscribe on the billing page."
    }
    case 'PT429':
      return e.retryAfter !== null
        ? `You're sending requests faster than your plan allows. Try again in ${e.retryAfter} seconds.`
        : "You're sending requests faster than your plan allows. Try again shortly."
    case 'PT404':
      return 'That promo code does not exist.'
    case 'PT410':
      return 'That promo code has expired or has been fully redeemed.'
    case 'PT409':
      return 'You have already redeemed this promo code.'
    case '22023':
      return 'Please check what you entered.'
    case '42501':
      return 'You are not allowed to do that.'
  }
  if (e.status === 401) return 'Your session has expired. Sign in again.'
  return e.message || 'Something went wrong. Try again.'
}

export const fmt = (n: number) => n.toLocaleString('en-US')

const ZERO_DECIMAL = new Set(['jpy', 'krw', 'vnd', 'clp', 'isk', 'ugx', 'xaf', 'xof'])
export function money(minor: number | null, currency: string | null): string {
  if (minor === null || !currency) return '—'
  const units = ZERO_DECIMAL.has(currency) ? minor : minor / 100
  return new Intl.NumberFormat('en-US', { style: 'currency', currency: currency.toUpperCase() }).format(units)
}

export function date(iso: string | null): string {
  if (!iso) return 'never'
  return new Date(iso).toLocaleDateString('en-US', { year: 'numeric', month: 'short', day: 'numeric', timeZone: 'UTC' })
}

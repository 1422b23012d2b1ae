// pg_billing called straight from the browser with supabase-js, typed by Supabase's own generator
// (types/database.ts, `make types`). `npm run typecheck` (in `make test-web`) fails when a function
// or argument is renamed in the extension, so this file is the contract as a frontend sees it.
// Read-only functions are called with { get: true }: PostgREST then runs them in a read-only
// transaction, and a GET can be cached.
import { createClient } from '@supabase/supabase-js'
import type { Database } from '../../../types/database'

export function billingClient(supabaseUrl: string, anonKey: string) {
  return createClient<Database>(supabaseUrl, anonKey).schema('billing')
}
type Billing = ReturnType<typeof billingClient>

/** Spendable tokens of the signed-in user (or of a team account they belong to). */
export async function balance(billing: Billing, userId: string, accountId?: string): Promise<number> {
  const { data, error } = await billing.rpc('get_balance', { p_user_id: userId, p_account_id: accountId }, { get: true })
  if (error) throw error
  return data
}

export async function summary(billing: Billing, accountId?: string) {
  const { data, error } = await billing.rpc('get_billing_summary', { p_account_id: accountId }, { get: true })
  if (error) throw error
  return data
}

/** Credits per UTC day and model over the last `days` days. */
export async function usageByModel(billing: Billing, days = 30) {
  const from = new Date(Date.now() - days * 86_400_000).toISOString()
  const { data, error } = await billing.rpc(
    'get_usage_history',
    { p_from: from, p_bucket: 'day', p_group_by: 'model' },
    { get: true },
  )
  if (error) throw error
  return data.map((r) => ({ day: r.bucket, model: r.group_key, tokens: r.tokens, requests: r.requests }))
}

export async function payments(billing: Billing, page: number, pageSize = 10) {
  const { data, error } = await billing.rpc(
    'get_payment_history',
    { p_limit: pageSize, p_offset: page * pageSize },
    { get: true },
  )
  if (error) throw error
  return data.map((p) => ({ id: p.event_id, type: p.event_type, at: p.event_created, amount: p.amount,
                            currency: p.currency, invoice: p.hosted_invoice_url, pdf: p.invoice_pdf }))
}

export async function grants(billing: Billing, page: number, pageSize = 10) {
  const { data, error } = await billing.rpc('get_grant_history', { p_limit: pageSize, p_offset: page * pageSize }, { get: true })
  if (error) throw error
  return data
}

/** PT404 unknown code, PT410 expired or used up, PT409 already redeemed by this user. */
export async function redeemPromo(billing: Billing, code: string) {
  const { data, error } = await billing.rpc('redeem_promo_code', { p_code: code })
  if (error) throw error
  return data[0]
}

/** A spend from the browser: only where the product lets users spend directly (PT402 when out of tokens). */
export async function consume(billing: Billing, userId: string, amount: number, idempotencyKey: string) {
  const { data, error } = await billing.rpc('consume_tokens', {
    p_user_id: userId,
    p_amount: amount,
    p_idempotency_key: idempotencyKey,
  })
  if (error?.code === 'PT402') return { ok: false as const, details: error.details }
  if (error) throw error
  return { ok: true as const, balanceAfter: data[0].balance_after }
}

export async function accounts(billing: Billing) {
  const { data, error } = await billing.rpc('get_accounts', {}, { get: true })
  if (error) throw error
  return data
}

//! Decodes a Stripe event payload into the few fields pg_billing applies, whatever the API
//! version: fields that moved between versions are read from every place they have lived.
//! The result is a flat JSON object that the SQL applier reads with `->>`.
//!
//! Nothing here trusts token counts: only ids, amounts in minor units, and states.
//!
//! What is an error and what is not: a payload that is not a JSON object with a string `id` and
//! `type` cannot be recorded at all, so it is an error (the caller answers 22023). Every other
//! payload decodes: a snapshot ("v1") event of a type pg_billing applies gets its fields; thin (v2)
//! events, other shapes and other types decode with `kind = "ignored"` and an `ignore_reason`, so
//! they are recorded and acknowledged instead of being retried by Stripe for days.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    InvalidJson(String),
    NotAnEvent(&'static str),
}

impl DecodeError {
    pub fn message(&self) -> String {
        match self {
            DecodeError::InvalidJson(e) => format!("payload is not valid JSON: {e}"),
            DecodeError::NotAnEvent(why) => format!("payload is not a Stripe event: {why}"),
        }
    }
}

/// What the applier does with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Checkout,
    InvoicePaid,
    InvoicePayment,
    Subscription,
    Charge,
    Refund,
    Dispute,
    PaymentIntent,
    InvoiceFailed,
    Ignored,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Checkout => "checkout",
            Kind::InvoicePaid => "invoice_paid",
            Kind::InvoicePayment => "invoice_payment",
            Kind::Subscription => "subscription",
            Kind::Charge => "charge",
            Kind::Refund => "refund",
            Kind::Dispute => "dispute",
            Kind::PaymentIntent => "payment_intent",
            Kind::InvoiceFailed => "invoice_failed",
            Kind::Ignored => "ignored",
        }
    }

    pub fn of(event_type: &str) -> Kind {
        match event_type {
            "checkout.session.completed"
            | "checkout.session.async_payment_succeeded"
            | "checkout.session.async_payment_failed" => Kind::Checkout,
            "invoice.paid" => Kind::InvoicePaid,
            "invoice_payment.paid" => Kind::InvoicePayment,
            "customer.subscription.created"
            | "customer.subscription.updated"
            | "customer.subscription.deleted"
            | "customer.subscription.paused"
            | "customer.subscription.resumed" => Kind::Subscription,
            "charge.refunded" => Kind::Charge,
            "refund.created" | "refund.updated" | "refund.failed" | "charge.refund.updated" => Kind::Refund,
            "charge.dispute.created"
            | "charge.dispute.updated"
            | "charge.dispute.closed"
            | "charge.dispute.funds_withdrawn"
            | "charge.dispute.funds_reinstated" => Kind::Dispute,
            // off-session top-ups are PaymentIntents of their own (the applier ignores others)
            "payment_intent.succeeded" | "payment_intent.payment_failed" => Kind::PaymentIntent,
            "invoice.payment_failed" => Kind::InvoiceFailed,
            _ => Kind::Ignored,
        }
    }
}

/// Follows a path of object keys and array indexes.
fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for key in path {
        cur = match cur {
            Value::Object(m) => m.get(*key)?,
            Value::Array(a) => a.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// A string id at the first path that holds one. Expanded objects (`{"id": ...}`) count too.
fn first_id(v: &Value, paths: &[&[&str]]) -> Value {
    for path in paths {
        match at(v, path) {
            Some(Value::String(s)) if !s.is_empty() => return Value::String(s.clone()),
            Some(Value::Object(m)) => {
                if let Some(Value::String(s)) = m.get("id") {
                    if !s.is_empty() {
                        return Value::String(s.clone());
                    }
                }
            }
            _ => {}
        }
    }
    Value::Null
}

/// A string at the first path that holds one.
fn first_str(v: &Value, paths: &[&[&str]]) -> Value {
    for path in paths {
        if let Some(Value::String(s)) = at(v, path) {
            return Value::String(s.clone());
        }
    }
    Value::Null
}

/// A lowercase currency code.
fn currency(v: &Value) -> Value {
    match at(v, &["currency"]) {
        Some(Value::String(s)) => Value::String(s.to_ascii_lowercase()),
        _ => Value::Null,
    }
}

fn int_of(v: Option<&Value>) -> Option<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

/// An integer at the first path that holds one (JSON integer, or a decimal string as in metadata).
fn first_int(v: &Value, paths: &[&[&str]]) -> Value {
    paths
        .iter()
        .find_map(|p| int_of(at(v, p)))
        .map_or(Value::Null, Value::from)
}

fn bool_at(v: &Value, path: &[&str]) -> Value {
    match at(v, path) {
        Some(Value::Bool(b)) => Value::Bool(*b),
        _ => Value::Null,
    }
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp such as `2022-02-15T00:27:45.330Z`
/// (thin events carry `created` in this form). `None` for anything else.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let hh = digits(i + 1, 2)?;
            let mm = digits(i + 4, 2)?;
            if hh > 23 || mm > 59 {
                return None;
            }
            (hh * 3600 + mm * 60) * if *sign == b'+' { 1 } else { -1 }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm), proleptic Gregorian calendar.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// One invoice line, reduced to what picks the plan line: price, proration, period and amount.
fn invoice_line(line: &Value) -> Value {
    // Since basil a line's parent says what it bills (only that one of its details is set);
    // before, `type` did and `proration` sat on the line itself.
    let (line_kind, proration_path): (&str, &[&str]) = match (
        at(line, &["parent", "type"]).and_then(Value::as_str),
        at(line, &["type"]).and_then(Value::as_str),
    ) {
        (Some("subscription_item_details"), _) => {
            ("subscription", &["parent", "subscription_item_details", "proration"])
        }
        (Some("invoice_item_details"), _) => ("invoiceitem", &["parent", "invoice_item_details", "proration"]),
        (_, Some("subscription")) => ("subscription", &["proration"]),
        (_, Some("invoiceitem")) => ("invoiceitem", &["proration"]),
        _ => ("unknown", &["proration"]),
    };
    let proration = at(line, proration_path).and_then(Value::as_bool).unwrap_or(false);
    let mut out = Map::new();
    out.insert(
        "price".into(),
        first_id(line, &[&["pricing", "price_details", "price"], &["price"], &["plan"]]),
    );
    out.insert("proration".into(), Value::Bool(proration));
    out.insert("line_kind".into(), Value::String(line_kind.into()));
    out.insert("period_start".into(), first_int(line, &[&["period", "start"]]));
    out.insert("period_end".into(), first_int(line, &[&["period", "end"]]));
    out.insert("amount".into(), first_int(line, &[&["amount"]]));
    Value::Object(out)
}

/// What an invoice was paid with: `amount_paid` plus customer credit balance applied to it. A
/// renewal covered by credit from an earlier downgrade is paid; a trial, a 100% coupon or an
/// amount below Stripe's minimum charge (carried to the next invoice) is not.
fn invoice_settled_amount(obj: &Value) -> Value {
    let Some(paid) = int_of(at(obj, &["amount_paid"])) else {
        return Value::Null;
    };
    let total = int_of(at(obj, &["total"])).unwrap_or(0).max(0) as i128;
    let credit = |key: &str| int_of(at(obj, &[key])).map_or(0i128, |b| (-(b as i128)).max(0));
    let applied = (credit("starting_balance") - credit("ending_balance")).clamp(0, total);
    let settled = (paid as i128 + applied).clamp(i64::MIN as i128, i64::MAX as i128);
    Value::from(settled as i64)
}

/// The payment an object belongs to: its PaymentIntent, or the charge when there is none.
fn payment_key(pi: &Value, charge: &Value) -> Value {
    if pi.is_string() {
        pi.clone()
    } else {
        charge.clone()
    }
}

/// Decodes `payload` into a flat JSON object (see README, "Webhooks").
pub fn decode(payload: &[u8]) -> Result<Value, DecodeError> {
    let event: Value = serde_json::from_slice(payload).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    if !event.is_object() {
        return Err(DecodeError::NotAnEvent("not a JSON object"));
    }
    let id = match at(&event, &["id"]) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => s.clone(),
        _ => return Err(DecodeError::NotAnEvent("missing or invalid \"id\"")),
    };
    let event_type = match at(&event, &["type"]) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => s.clone(),
        _ => return Err(DecodeError::NotAnEvent("missing or invalid \"type\"")),
    };
    let created = match at(&event, &["created"]) {
        Some(Value::Number(n)) => n.as_i64().filter(|c| *c >= 0),
        Some(Value::String(s)) => parse_rfc3339(s).filter(|c| *c >= 0),
        _ => None,
    };
    let thin = at(&event, &["object"])
        .and_then(Value::as_str)
        .is_some_and(|o| o.starts_with("v2."));
    let obj = match at(&event, &["data", "object"]) {
        Some(o @ Value::Object(_)) if !thin && created.is_some() => Some(o),
        _ => None,
    };
    let (kind, shape, ignore_reason) = match obj {
        None if thin => (Kind::Ignored, "thin", Some("thin_event")),
        None => (Kind::Ignored, "unknown", Some("unknown_shape")),
        Some(_) => match Kind::of(&event_type) {
            Kind::Ignored => (Kind::Ignored, "snapshot", Some("event_type_not_used")),
            k => (k, "snapshot", None),
        },
    };

    let mut out = Map::new();
    out.insert("id".into(), Value::String(id));
    out.insert("type".into(), Value::String(event_type.clone()));
    out.insert("created".into(), created.map_or(Value::Null, Value::from));
    out.insert("livemode".into(), bool_at(&event, &["livemode"]));
    out.insert("account".into(), first_str(&event, &[&["account"]]));
    out.insert("api_version".into(), first_str(&event, &[&["api_version"]]));
    out.insert("shape".into(), Value::String(shape.into()));
    out.insert("kind".into(), Value::String(kind.as_str().into()));
    out.insert(
        "ignore_reason".into(),
        ignore_reason.map_or(Value::Null, |r| Value::String(r.into())),
    );
    let Some(obj) = obj else {
        out.insert("object_id".into(), Value::Null);
        return Ok(Value::Object(out));
    };
    out.insert("object_id".into(), first_str(obj, &[&["id"]]));

    let mut put = |k: &str, v: Value| {
        out.insert(k.into(), v);
    };
    match kind {
        Kind::Checkout => {
            put("mode", first_str(obj, &[&["mode"]]));
            put("payment_status", first_str(obj, &[&["payment_status"]]));
            put("customer", first_id(obj, &[&["customer"]]));
            put("client_reference_id", first_str(obj, &[&["client_reference_id"]]));
            put("metadata_user_id", first_str(obj, &[&["metadata", "user_id"]]));
            put("metadata_account_id", first_str(obj, &[&["metadata", "account_id"]]));
            put("price_id", first_str(obj, &[&["metadata", "price_id"]]));
            put("quantity", first_int(obj, &[&["metadata", "quantity"]]));
            put("currency", currency(obj));
            put("amount_total", first_int(obj, &[&["amount_total"]]));
            put("amount_subtotal", first_int(obj, &[&["amount_subtotal"]]));
            let pi = first_id(obj, &[&["payment_intent"]]);
            put("payment_key", pi.clone());
            put("payment_intent", pi);
            put("subscription", first_id(obj, &[&["subscription"]]));
            put("object_created", first_int(obj, &[&["created"]]));
        }
        Kind::InvoicePaid => {
            put("customer", first_id(obj, &[&["customer"]]));
            put(
                "subscription",
                first_id(
                    obj,
                    &[&["subscription"], &["parent", "subscription_details", "subscription"]],
                ),
            );
            put("billing_reason", first_str(obj, &[&["billing_reason"]]));
            put(
                "metadata_user_id",
                first_str(
                    obj,
                    &[
                        &["parent", "subscription_details", "metadata", "user_id"],
                        &["subscription_details", "metadata", "user_id"],
                        &["metadata", "user_id"],
                    ],
                ),
            );
            put(
                "metadata_account_id",
                first_str(
                    obj,
                    &[
                        &["parent", "subscription_details", "metadata", "account_id"],
                        &["subscription_details", "metadata", "account_id"],
                        &["metadata", "account_id"],
                    ],
                ),
            );
            put("currency", currency(obj));
            put("amount_paid", first_int(obj, &[&["amount_paid"]]));
            put("amount_settled", invoice_settled_amount(obj));
            put("object_created", first_int(obj, &[&["created"]]));
            // Until 2025-03-31.basil an invoice names its PaymentIntent and charge; since then
            // invoice_payment.paid links them.
            let pi = first_id(obj, &[&["payment_intent"]]);
            let charge = first_id(obj, &[&["charge"]]);
            put("payment_key", payment_key(&pi, &charge));
            put("payment_intent", pi);
            put("charge", charge);
            let lines = match at(obj, &["lines", "data"]) {
                Some(Value::Array(a)) => a.iter().map(invoice_line).collect(),
                _ => Vec::new(),
            };
            put("lines", Value::Array(lines));
            put("lines_has_more", bool_at(obj, &["lines", "has_more"]));
        }
        Kind::InvoicePayment => {
            put("invoice", first_id(obj, &[&["invoice"]]));
            let pi = first_id(obj, &[&["payment", "payment_intent"]]);
            let charge = first_id(obj, &[&["payment", "charge"]]);
            put("payment_key", payment_key(&pi, &charge));
            put("payment_intent", pi);
            put("charge", charge);
            put("amount_paid", first_int(obj, &[&["amount_paid"]]));
            put("currency", currency(obj));
            put("status", first_str(obj, &[&["status"]]));
        }
        Kind::Subscription => {
            put("customer", first_id(obj, &[&["customer"]]));
            put("status", first_str(obj, &[&["status"]]));
            put(
                "price_id",
                first_id(obj, &[&["items", "data", "0", "price"], &["plan"]]),
            );
            put(
                "current_period_start",
                first_int(
                    obj,
                    &[
                        &["current_period_start"],
                        &["items", "data", "0", "current_period_start"],
                    ],
                ),
            );
            put(
                "current_period_end",
                first_int(
                    obj,
                    &[&["current_period_end"], &["items", "data", "0", "current_period_end"]],
                ),
            );
            put("cancel_at_period_end", bool_at(obj, &["cancel_at_period_end"]));
            put("canceled_at", first_int(obj, &[&["canceled_at"]]));
            put("metadata_user_id", first_str(obj, &[&["metadata", "user_id"]]));
            put("metadata_account_id", first_str(obj, &[&["metadata", "account_id"]]));
        }
        Kind::PaymentIntent => {
            put("customer", first_id(obj, &[&["customer"]]));
            put("status", first_str(obj, &[&["status"]]));
            put("amount", first_int(obj, &[&["amount"]]));
            put("amount_received", first_int(obj, &[&["amount_received"]]));
            put("currency", currency(obj));
            put("payment_key", first_str(obj, &[&["id"]]));
            put("metadata_user_id", first_str(obj, &[&["metadata", "user_id"]]));
            put("metadata_account_id", first_str(obj, &[&["metadata", "account_id"]]));
            put("price_id", first_str(obj, &[&["metadata", "price_id"]]));
            put("quantity", first_int(obj, &[&["metadata", "quantity"]]));
            put("topup", first_str(obj, &[&["metadata", "pg_billing_topup"]]));
            put("failure_code", first_str(obj, &[&["last_payment_error", "code"]]));
            put("failure_message", first_str(obj, &[&["last_payment_error", "message"]]));
            put("object_created", first_int(obj, &[&["created"]]));
        }
        Kind::InvoiceFailed => {
            put("customer", first_id(obj, &[&["customer"]]));
            put(
                "subscription",
                first_id(
                    obj,
                    &[&["subscription"], &["parent", "subscription_details", "subscription"]],
                ),
            );
            put("amount_due", first_int(obj, &[&["amount_due"]]));
            put("currency", currency(obj));
            put("attempt_count", first_int(obj, &[&["attempt_count"]]));
            put(
                "metadata_account_id",
                first_str(
                    obj,
                    &[
                        &["parent", "subscription_details", "metadata", "account_id"],
                        &["subscription_details", "metadata", "account_id"],
                    ],
                ),
            );
            put(
                "metadata_user_id",
                first_str(
                    obj,
                    &[
                        &["parent", "subscription_details", "metadata", "user_id"],
                        &["subscription_details", "metadata", "user_id"],
                    ],
                ),
            );
        }
        Kind::Charge => {
            let pi = first_id(obj, &[&["payment_intent"]]);
            let charge = first_str(obj, &[&["id"]]);
            put("payment_key", payment_key(&pi, &charge));
            put("payment_intent", pi);
            put("charge", charge);
            put("amount", first_int(obj, &[&["amount"]]));
            put("amount_captured", first_int(obj, &[&["amount_captured"]]));
            put("amount_refunded", first_int(obj, &[&["amount_refunded"]]));
            put("currency", currency(obj));
            // API versions before 2022-11-15 list the charge's refunds in the event.
            let refunds = match at(obj, &["refunds", "data"]) {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|r| {
                        let id = first_str(r, &[&["id"]]);
                        let amount = first_int(r, &[&["amount"]]);
                        (id.is_string() && amount.is_i64()).then(|| {
                            let mut m = Map::new();
                            m.insert("id".into(), id);
                            m.insert("amount".into(), amount);
                            m.insert("status".into(), first_str(r, &[&["status"]]));
                            Value::Object(m)
                        })
                    })
                    .collect(),
                _ => Vec::new(),
            };
            put("refunds", Value::Array(refunds));
        }
        Kind::Refund => {
            let pi = first_id(obj, &[&["payment_intent"]]);
            let charge = first_id(obj, &[&["charge"]]);
            put("payment_key", payment_key(&pi, &charge));
            put("payment_intent", pi);
            put("charge", charge);
            put("amount", first_int(obj, &[&["amount"]]));
            put("currency", currency(obj));
            put("status", first_str(obj, &[&["status"]]));
        }
        Kind::Dispute => {
            let pi = first_id(obj, &[&["payment_intent"]]);
            let charge = first_id(obj, &[&["charge"]]);
            put("payment_key", payment_key(&pi, &charge));
            put("payment_intent", pi);
            put("charge", charge);
            put("status", first_str(obj, &[&["status"]]));
            put("amount", first_int(obj, &[&["amount"]]));
            put("currency", currency(obj));
        }
        Kind::Ignored => {}
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOVER: &str = "2025-10-29.clover";
    const LEGACY: &str = "2024-06-20";

    fn fixture(version: &str, name: &str) -> Value {
        let path = format!(
            "{}/../tests/fixtures/stripe/events/{version}/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        decode(&bytes).unwrap_or_else(|e| panic!("{path}: {e:?}"))
    }

    fn names(version: &str) -> Vec<String> {
        let dir = format!(
            "{}/../tests/fixtures/stripe/events/{version}",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("fixtures")
            .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn both_api_shapes_decode_to_the_same_fields() {
        let both: Vec<String> = names(CLOVER)
            .into_iter()
            .filter(|n| names(LEGACY).contains(n))
            .collect();
        assert!(both.len() >= 30, "{both:?}");
        for name in both {
            let mut current = fixture(CLOVER, &name);
            let mut old = fixture(LEGACY, &name);
            for v in [&mut current, &mut old] {
                let m = v.as_object_mut().expect("object");
                m.remove("api_version");
                // Only 2024-06-20 invoices name their payment; clover links it with invoice_payment.paid.
                if m["kind"] == "invoice_paid" {
                    for k in ["payment_key", "payment_intent", "charge"] {
                        m.remove(k);
                    }
                }
            }
            assert_eq!(current, old, "{name}");
        }
    }

    #[test]
    fn legacy_invoices_name_their_payment_and_clover_ones_do_not() {
        let old = fixture(LEGACY, "06_invoice_paid_first.json");
        assert_eq!(old["payment_key"], "pi_TestProA1");
        assert_eq!(old["charge"], "ch_TestProA1");
        let new = fixture(CLOVER, "06_invoice_paid_first.json");
        assert_eq!(new["payment_key"], Value::Null);
        let link = fixture(CLOVER, "06b_invoice_payment_paid_first.json");
        assert_eq!(
            (&link["kind"], &link["invoice"], &link["payment_key"]),
            (
                &"invoice_payment".into(),
                &"in_TestProA1".into(),
                &"pi_TestProA1".into()
            )
        );
    }

    #[test]
    fn invoice_fields_come_from_new_places() {
        let v = fixture(CLOVER, "06_invoice_paid_first.json");
        assert_eq!(v["subscription"], "sub_TestProA");
        assert_eq!(v["billing_reason"], "subscription_create");
        assert_eq!(v["lines"][0]["price"], "price_ProMonthly");
        assert_eq!(v["lines"][0]["proration"], false);
        assert_eq!(v["lines"][0]["line_kind"], "subscription");
        assert_eq!(v["amount_settled"], 2000);
        assert_eq!(v["kind"], "invoice_paid");
    }

    #[test]
    fn every_line_is_decoded_with_its_proration_flag() {
        for version in [CLOVER, LEGACY] {
            let v = fixture(version, "20_invoice_renewal_prorations_first.json");
            let lines = v["lines"].as_array().expect("lines");
            assert_eq!(lines.len(), 3, "{version}");
            assert_eq!(lines[0]["proration"], true, "{version}");
            assert_eq!(lines[2]["proration"], false, "{version}");
            assert_eq!(lines[2]["price"], "price_ProMonthly", "{version}");
        }
    }

    #[test]
    fn settled_amount_counts_credit_balance_but_not_carried_debits() {
        let inv = |paid: i64, total: i64, start: i64, end: i64| serde_json::json!({"amount_paid": paid, "total": total, "starting_balance": start, "ending_balance": end});
        assert_eq!(invoice_settled_amount(&inv(2000, 2000, 0, 0)), 2000);
        assert_eq!(invoice_settled_amount(&inv(0, 2000, -2500, -500)), 2000); // credit from a downgrade
        assert_eq!(invoice_settled_amount(&inv(500, 2000, -1500, 0)), 2000);
        assert_eq!(invoice_settled_amount(&inv(0, 0, 0, 0)), 0); // trial or 100% coupon
        assert_eq!(invoice_settled_amount(&inv(0, 30, 0, 30)), 0); // below the minimum charge: carried
        assert_eq!(
            invoice_settled_amount(
                &serde_json::json!({"amount_paid": i64::MAX, "total": i64::MAX, "starting_balance": i64::MIN})
            ),
            i64::MAX
        );
    }

    #[test]
    fn subscription_periods_from_items_or_top_level() {
        for version in [CLOVER, LEGACY] {
            let v = fixture(version, "05_subscription_created.json");
            assert_eq!(v["current_period_start"], 1763900000, "{version}");
            assert_eq!(v["price_id"], "price_ProMonthly", "{version}");
        }
    }

    #[test]
    fn checkout_metadata_quantity_and_amounts() {
        let v = fixture(CLOVER, "01_checkout_pack_paid.json");
        assert_eq!(v["quantity"], 1);
        assert_eq!(v["price_id"], "price_Pack1000");
        assert_eq!(v["payment_key"], "pi_TestPackA");
        assert_eq!(v["amount_subtotal"], 999);
    }

    #[test]
    fn team_account_from_metadata_of_checkout_invoice_or_subscription() {
        let team = "7d0c3f4e-1111-4a5b-9c0d-0123456789ab";
        let checkout = format!(
            r#"{{"id":"evt_1","type":"checkout.session.completed","created":1,
                "data":{{"object":{{"id":"cs_1","object":"checkout.session","metadata":{{"account_id":"{team}"}}}}}}}}"#
        );
        let basil_invoice = format!(
            r#"{{"id":"evt_2","type":"invoice.paid","created":1,"data":{{"object":{{"id":"in_1","object":"invoice",
                "parent":{{"subscription_details":{{"metadata":{{"account_id":"{team}"}},"subscription":"sub_1"}}}}}}}}}}"#
        );
        let legacy_invoice = format!(
            r#"{{"id":"evt_3","type":"invoice.paid","created":1,"data":{{"object":{{"id":"in_1","object":"invoice",
                "subscription":"sub_1","subscription_details":{{"metadata":{{"account_id":"{team}"}}}}}}}}}}"#
        );
        let subscription = format!(
            r#"{{"id":"evt_4","type":"customer.subscription.updated","created":1,
                "data":{{"object":{{"id":"sub_1","object":"subscription","metadata":{{"account_id":"{team}"}}}}}}}}"#
        );
        for body in [checkout, basil_invoice, legacy_invoice, subscription] {
            let v = decode(body.as_bytes()).expect("decodes");
            assert_eq!(v["metadata_account_id"], team, "{body}");
        }
        let v = fixture(CLOVER, "01_checkout_pack_paid.json");
        assert_eq!(v["metadata_account_id"], Value::Null);
    }

    #[test]
    fn top_up_payment_intents_and_failed_invoices() {
        let pi = br#"{"id":"evt_pi","type":"payment_intent.payment_failed","created":5,"data":{"object":{
            "id":"pi_T1","object":"payment_intent","amount":999,"amount_received":0,"currency":"usd","customer":"cus_1",
            "status":"requires_payment_method","last_payment_error":{"code":"card_declined","message":"declined"},
            "metadata":{"pg_billing_topup":"topup.requested:acct:1","account_id":"a","price_id":"price_P","quantity":"1"}}}}"#;
        let v = decode(pi).expect("decodes");
        assert_eq!(
            (
                &v["kind"],
                &v["payment_key"],
                &v["topup"],
                &v["failure_code"],
                &v["quantity"]
            ),
            (
                &"payment_intent".into(),
                &"pi_T1".into(),
                &"topup.requested:acct:1".into(),
                &"card_declined".into(),
                &1.into()
            )
        );
        let inv = br#"{"id":"evt_if","type":"invoice.payment_failed","created":5,"data":{"object":{"id":"in_1",
            "object":"invoice","customer":"cus_1","amount_due":2000,"currency":"usd","attempt_count":2,
            "parent":{"subscription_details":{"subscription":"sub_1","metadata":{"account_id":"t"}}}}}}"#;
        let v = decode(inv).expect("decodes");
        assert_eq!(
            (
                &v["kind"],
                &v["subscription"],
                &v["metadata_account_id"],
                &v["amount_due"]
            ),
            (&"invoice_failed".into(), &"sub_1".into(), &"t".into(), &2000.into())
        );
    }

    #[test]
    fn refunds_and_disputes_name_their_payment() {
        let v = fixture(CLOVER, "12_charge_refunded_partial.json");
        assert_eq!(
            (&v["kind"], &v["payment_key"], &v["amount_captured"]),
            (&"charge".into(), &"pi_TestPackA".into(), &999.into())
        );
        let v = fixture(CLOVER, "31_refund_failed.json");
        assert_eq!(
            (&v["kind"], &v["status"], &v["payment_key"]),
            (&"refund".into(), &"failed".into(), &"pi_TestPackA".into())
        );
        let v = fixture(CLOVER, "14_dispute_created.json");
        assert_eq!(
            (&v["kind"], &v["object_id"]),
            (&"dispute".into(), &"dp_TestPackA".into())
        );
    }

    #[test]
    fn thin_events_and_unknown_shapes_are_ignored_not_errors() {
        let v = fixture(CLOVER, "40_thin_event.json");
        assert_eq!(
            (&v["kind"], &v["shape"], &v["ignore_reason"]),
            (&"ignored".into(), &"thin".into(), &"thin_event".into())
        );
        assert_eq!(v["created"], 1763903600);
        let v = decode(br#"{"id":"x1","type":"something.else","created":5}"#).expect("decodes");
        assert_eq!((&v["kind"], &v["shape"]), (&"ignored".into(), &"unknown".into()));
        let v =
            decode(br#"{"id":"ev-42","type":"customer.created","created":1,"data":{"object":{}}}"#).expect("decodes");
        assert_eq!(
            (&v["kind"], &v["ignore_reason"]),
            (&"ignored".into(), &"event_type_not_used".into())
        );
        // an id need not start with evt_
        let v = fixture(CLOVER, "42_event_id_without_evt_prefix.json");
        assert_eq!(v["kind"], "checkout");
    }

    #[test]
    fn connect_account_and_livemode_are_read() {
        let v = fixture(CLOVER, "38_connect_account_event.json");
        assert_eq!(v["account"], "acct_TestConnected");
        let v = fixture(CLOVER, "37_livemode_mismatch.json");
        assert_eq!(v["livemode"], true);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2022-02-15T00:27:45.330Z"), Some(1644884865));
        assert_eq!(parse_rfc3339("2022-02-15T01:27:45+01:00"), Some(1644884865));
        assert_eq!(parse_rfc3339("2000-02-29T12:00:00Z"), Some(951825600));
        for bad in [
            "",
            "2022-02-15",
            "2022-13-01T00:00:00Z",
            "2022-02-15T00:27:45",
            "2022-02-15T00:27:45.Z",
            "２０２２-02-15T00:27:45Z",
            "2022-02-15T00:27:45+0100",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn legacy_samples_decode_or_fail_cleanly() {
        let dir = format!("{}/../tests/fixtures/stripe/samples", env!("CARGO_MANIFEST_DIR"));
        for entry in std::fs::read_dir(&dir).expect("samples") {
            let path = entry.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read");
            let _ = decode(&bytes); // must not panic, whatever the shape
        }
        let v = decode(&std::fs::read(format!("{dir}/legacy_evt_invoice_paid.json")).expect("read")).expect("decodes");
        assert_eq!(v["kind"], "invoice_paid");
        assert!(v["lines"][0]["price"].is_string());
        let v =
            decode(&std::fs::read(format!("{dir}/legacy_evt_charge_refunded.json")).expect("read")).expect("decodes");
        assert!(!v["refunds"]
            .as_array()
            .expect("refunds listed in 2020 events")
            .is_empty());
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        assert!(matches!(decode(b"not json"), Err(DecodeError::InvalidJson(_))));
        assert!(matches!(decode(b"[]"), Err(DecodeError::NotAnEvent(_))));
        assert!(matches!(decode(br#"{"type":"x"}"#), Err(DecodeError::NotAnEvent(_))));
        assert!(matches!(
            decode(br#"{"id":"","type":"x"}"#),
            Err(DecodeError::NotAnEvent(_))
        ));
        assert!(matches!(decode(br#"{"id":"evt_1"}"#), Err(DecodeError::NotAnEvent(_))));
        let v = decode(br#"{"id":"evt_1","type":"x","created":-1,"data":{"object":{}}}"#).expect("decodes");
        assert_eq!((&v["kind"], &v["created"]), (&"ignored".into(), &Value::Null));
        let v = decode(br#"{"id":"evt_1","type":"charge.refunded","created":1,"data":{"object":{"amount":"x","payment_intent":7}}}"#).expect("decodes");
        assert_eq!(v["amount"], Value::Null);
        assert_eq!(v["payment_intent"], Value::Null);
    }
}

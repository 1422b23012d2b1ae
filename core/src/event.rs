//! Decodes a Stripe event payload into the few fields pg_billing applies, whatever the API
//! version: fields that moved between versions are read from every place they have lived.
//! The result is a flat JSON object that the SQL applier reads with `->>`.
//!
//! Nothing here trusts token counts: only ids, amounts in minor units, and states.

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
    Subscription,
    ChargeRefunded,
    Dispute,
    Ignored,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Checkout => "checkout",
            Kind::InvoicePaid => "invoice_paid",
            Kind::Subscription => "subscription",
            Kind::ChargeRefunded => "charge_refunded",
            Kind::Dispute => "dispute",
            Kind::Ignored => "ignored",
        }
    }

    pub fn of(event_type: &str) -> Kind {
        match event_type {
            "checkout.session.completed"
            | "checkout.session.async_payment_succeeded"
            | "checkout.session.async_payment_failed" => Kind::Checkout,
            "invoice.paid" => Kind::InvoicePaid,
            "customer.subscription.created"
            | "customer.subscription.updated"
            | "customer.subscription.deleted" => Kind::Subscription,
            "charge.refunded" => Kind::ChargeRefunded,
            "charge.dispute.created" | "charge.dispute.closed" => Kind::Dispute,
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
                    return Value::String(s.clone());
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

/// An integer at the first path that holds one (JSON integer, or a decimal string as in metadata).
fn first_int(v: &Value, paths: &[&[&str]]) -> Value {
    for path in paths {
        match at(v, path) {
            Some(Value::Number(n)) if n.is_i64() => return Value::Number(n.clone()),
            Some(Value::String(s)) => {
                if let Ok(i) = s.trim().parse::<i64>() {
                    return Value::from(i);
                }
            }
            _ => {}
        }
    }
    Value::Null
}

fn bool_at(v: &Value, path: &[&str]) -> Value {
    match at(v, path) {
        Some(Value::Bool(b)) => Value::Bool(*b),
        _ => Value::Null,
    }
}

/// Decodes `payload` into a flat JSON object (see README, "Stripe events").
pub fn decode(payload: &[u8]) -> Result<Value, DecodeError> {
    let event: Value =
        serde_json::from_slice(payload).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    if !event.is_object() {
        return Err(DecodeError::NotAnEvent("not a JSON object"));
    }
    let id = match at(&event, &["id"]) {
        Some(Value::String(s)) if s.starts_with("evt_") && s.len() <= 255 => s.clone(),
        _ => return Err(DecodeError::NotAnEvent("missing or invalid \"id\"")),
    };
    let event_type = match at(&event, &["type"]) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => s.clone(),
        _ => return Err(DecodeError::NotAnEvent("missing or invalid \"type\"")),
    };
    let created = match at(&event, &["created"]) {
        Some(Value::Number(n)) if n.as_i64().is_some_and(|c| c >= 0) => n.clone(),
        _ => return Err(DecodeError::NotAnEvent("missing or invalid \"created\"")),
    };
    let obj = match at(&event, &["data", "object"]) {
        Some(o @ Value::Object(_)) => o,
        _ => return Err(DecodeError::NotAnEvent("missing \"data.object\"")),
    };
    let kind = Kind::of(&event_type);

    let mut out = Map::new();
    out.insert("id".into(), Value::String(id));
    out.insert("type".into(), Value::String(event_type.clone()));
    out.insert("created".into(), Value::Number(created));
    out.insert("livemode".into(), bool_at(&event, &["livemode"]));
    out.insert("api_version".into(), first_str(&event, &[&["api_version"]]));
    out.insert("kind".into(), Value::String(kind.as_str().into()));
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
            put("price_id", first_str(obj, &[&["metadata", "price_id"]]));
            put("quantity", first_int(obj, &[&["metadata", "quantity"]]));
            put("currency", first_str(obj, &[&["currency"]]));
            put("amount_total", first_int(obj, &[&["amount_total"]]));
            put("payment_intent", first_id(obj, &[&["payment_intent"]]));
            put("subscription", first_id(obj, &[&["subscription"]]));
        }
        Kind::InvoicePaid => {
            put("customer", first_id(obj, &[&["customer"]]));
            put(
                "subscription",
                first_id(
                    obj,
                    &[
                        &["subscription"],
                        &["parent", "subscription_details", "subscription"],
                        &["lines", "data", "0", "subscription"],
                        &["lines", "data", "0", "parent", "subscription_item_details", "subscription"],
                    ],
                ),
            );
            put(
                "price_id",
                first_id(
                    obj,
                    &[
                        &["lines", "data", "0", "pricing", "price_details", "price"],
                        &["lines", "data", "0", "price"],
                        &["lines", "data", "0", "plan"],
                    ],
                ),
            );
            put(
                "period_start",
                first_int(obj, &[&["lines", "data", "0", "period", "start"], &["period_start"]]),
            );
            put(
                "period_end",
                first_int(obj, &[&["lines", "data", "0", "period", "end"], &["period_end"]]),
            );
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
            put("currency", first_str(obj, &[&["currency"]]));
            put("amount_paid", first_int(obj, &[&["amount_paid"]]));
            put(
                "payment_intent",
                first_id(obj, &[&["payment_intent"], &["payments", "data", "0", "payment", "payment_intent"]]),
            );
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
                    &[&["current_period_start"], &["items", "data", "0", "current_period_start"]],
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
        }
        Kind::ChargeRefunded => {
            put("payment_intent", first_id(obj, &[&["payment_intent"]]));
            put("amount", first_int(obj, &[&["amount"]]));
            put("amount_refunded", first_int(obj, &[&["amount_refunded"]]));
            put("currency", first_str(obj, &[&["currency"]]));
        }
        Kind::Dispute => {
            put("charge", first_id(obj, &[&["charge"]]));
            put("payment_intent", first_id(obj, &[&["payment_intent"]]));
            put("status", first_str(obj, &[&["status"]]));
            put("amount", first_int(obj, &[&["amount"]]));
            put("currency", first_str(obj, &[&["currency"]]));
        }
        Kind::Ignored => {}
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(version: &str, name: &str) -> Value {
        let path = format!("{}/../tests/fixtures/stripe/events/{version}/{name}", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        decode(&bytes).unwrap_or_else(|e| panic!("{path}: {e:?}"))
    }

    #[test]
    fn both_api_shapes_decode_to_the_same_fields() {
        let dir = format!("{}/../tests/fixtures/stripe/events/current", env!("CARGO_MANIFEST_DIR"));
        let mut names: Vec<_> = std::fs::read_dir(&dir).expect("fixtures").map(|e| e.expect("entry").file_name()).collect();
        names.sort();
        assert!(names.len() >= 17);
        for name in names {
            let name = name.to_string_lossy().to_string();
            let mut current = fixture("current", &name);
            let mut old = fixture("2024-06-20", &name);
            for v in [&mut current, &mut old] {
                let m = v.as_object_mut().expect("object");
                m.remove("api_version");
                // Only newer invoices carry the subscription's metadata (user_id); both shapes link
                // the user through the customer or subscription instead.
                if m["kind"] == "invoice_paid" {
                    m.remove("metadata_user_id");
                }
            }
            assert_eq!(current, old, "{name}");
        }
    }

    #[test]
    fn invoice_fields_come_from_new_places() {
        let v = fixture("current", "06_invoice_paid_first.json");
        assert_eq!(v["subscription"], "sub_TestProA");
        assert_eq!(v["price_id"], "price_ProMonthly");
        assert_eq!(v["period_end"], 1766492000);
        assert_eq!(v["kind"], "invoice_paid");
    }

    #[test]
    fn subscription_periods_from_items_or_top_level() {
        for version in ["current", "2024-06-20"] {
            let v = fixture(version, "05_subscription_created.json");
            assert_eq!(v["current_period_start"], 1763900000, "{version}");
            assert_eq!(v["price_id"], "price_ProMonthly", "{version}");
        }
    }

    #[test]
    fn checkout_metadata_quantity_is_parsed() {
        let v = fixture("current", "01_checkout_pack_paid.json");
        assert_eq!(v["quantity"], 1);
        assert_eq!(v["price_id"], "price_Pack1000");
        assert_eq!(v["payment_intent"], "pi_TestPackA");
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
        assert!(v["price_id"].is_string());
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        assert!(matches!(decode(b"not json"), Err(DecodeError::InvalidJson(_))));
        assert!(matches!(decode(b"[]"), Err(DecodeError::NotAnEvent(_))));
        assert!(matches!(decode(br#"{"id":"evt_1","type":"x","created":-1,"data":{"object":{}}}"#), Err(DecodeError::NotAnEvent(_))));
        assert!(matches!(decode(br#"{"id":"evt_1","type":"x","created":1}"#), Err(DecodeError::NotAnEvent(_))));
        let v = decode(br#"{"id":"evt_1","type":"charge.refunded","created":1,"data":{"object":{"amount":"x","payment_intent":7}}}"#).expect("decodes");
        assert_eq!(v["amount"], Value::Null);
        assert_eq!(v["payment_intent"], Value::Null);
    }
}

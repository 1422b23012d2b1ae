"""PostgREST's per-request SQL for RPC calls, replayed exactly (PostgREST v12.2, v13.0 and v14.5, which
send the same SQL: src/PostgREST/Query.hs setPgLocals, QueryBuilder.callPlanToQuery, Error.hs
pgErrorStatus).

call() returns (http_status, json_body) as supabase-js would see them.
"""
import json

import psycopg


def http_status(sqlstate, role):
    """PostgREST's SQLSTATE → HTTP status table (Error.hs pgErrorStatus)."""
    s = sqlstate
    if s == "42501":
        return 401 if role == "anon" else 403
    if s == "P0001":
        return 400
    if s.startswith("P0"):
        return 500
    if s.startswith("PT") and s[2:].isdigit():
        return int(s[2:])
    if s in ("23505", "23503"):
        return 409
    if s == "25006":
        return 405
    if s in ("42883", "42P01"):
        return 404
    if s.startswith("08") or s.startswith("53") and s != "53400" or s == "57P01":
        return 503
    if s.startswith(("0L", "0P", "28")):
        return 403
    if s.startswith("40") or s == "53400" or s.startswith("XX"):
        return 500
    return 400


def _signature(conn, schema, fn):
    row = conn.execute(
        "select coalesce(p.proargnames, '{}'), "
        " array(select format_type(t, null) from unnest(p.proargtypes) t), "
        " p.proretset or t.typtype = 'c' or p.prorettype = 'record'::regtype, p.provolatile, p.proretset "
        "from pg_proc p join pg_namespace n on n.oid = p.pronamespace join pg_type t on t.oid = p.prorettype "
        "where n.nspname = %s and p.proname = %s", (schema, fn)).fetchone()
    names, types, composite, volatility, returns_set = row
    return list(zip(names[:len(types)], types)), composite, volatility, composite and not returns_set


def build_sql(schema, fn, args, params, composite, single=False):
    """The statement PostgREST prepares for POST /rpc/fn (body = $1::json)."""
    passed = [(n, t) for n, t in params if n in args]
    call_args = ", ".join(f'"{n}" := pgrst_body."{n}"' for n, _ in passed)
    body = ""
    if passed:
        cols = ", ".join(f'"{n}"' for n, _ in passed)
        typed = ", ".join(f'"{n}" {t}' for n, t in passed)
        body = (f" LATERAL (SELECT {cols} FROM json_to_record(pgrst_payload.json_data) AS _({typed}) LIMIT 1)"
                " pgrst_body ,")
    if composite:
        source = (f'WITH pgrst_source AS (SELECT "pgrst_call".* FROM (SELECT %s::json AS json_data) pgrst_payload,'
                  f'{body} LATERAL "{schema}"."{fn}"({call_args}) pgrst_call)')
        # a single composite (not SETOF) is an object (QueryBuilder.hs asJsonF returnsSingleComposite)
        body_f = "coalesce(json_agg(_postgrest_t)->0, 'null')" if single else "coalesce(json_agg(_postgrest_t), '[]')"
        select = f"pg_catalog.count(_postgrest_t) AS page_total, {body_f} AS body"
    else:
        source = (f'WITH pgrst_source AS (SELECT pgrst_call.pgrst_scalar FROM (SELECT %s::json AS json_data) pgrst_payload,'
                  f'{body} LATERAL (SELECT "{schema}"."{fn}"({call_args}) pgrst_scalar) pgrst_call)')
        select = "1 AS page_total, coalesce(json_agg(_postgrest_t.pgrst_scalar)->0, 'null') AS body"
    return (f"{source} SELECT null::bigint AS total_result_set, {select}, "
            "nullif(current_setting('response.headers', true), '') AS response_headers, "
            "nullif(current_setting('response.status', true), '') AS response_status, '' AS response_inserted "
            f'FROM (SELECT "{fn}".* FROM "pgrst_source" AS "{fn}") _postgrest_t')


def call(conn_factory, fn, args=None, role="authenticated", sub=None, claims=None, method="POST", schema="billing"):
    """One RPC request: its own transaction on an authenticator connection, as PostgREST runs it."""
    args = args or {}
    claims = dict(claims or {})
    claims["role"] = role
    if sub is not None:
        claims.setdefault("sub", str(sub))
        claims.setdefault("aud", "authenticated")
    conn = conn_factory()
    try:
        params, composite, volatility, single = _signature(conn, schema, fn)
        # READ ONLY for GET/HEAD and for POST to STABLE/IMMUTABLE functions (Plan.hs).
        read_only = method in ("GET", "HEAD") or volatility in ("s", "i")
        conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED " + ("READ ONLY" if read_only else "READ WRITE"))
        try:
            timeout = "3s" if role == "anon" else "8s"
            conn.execute(
                "select set_config('search_path', '\"public\", \"public\", \"extensions\"', true), "
                "set_config('statement_timeout', %s, true), set_config('role', %s, true), "
                "set_config('request.jwt.claims', %s, true), set_config('request.method', %s, true), "
                "set_config('request.path', %s, true), "
                "set_config('request.headers', '{\"content-type\":\"application/json\"}', true), "
                "set_config('request.cookies', '{}', true)",
                (timeout, role, json.dumps(claims), method, f"/rpc/{fn}"))
            row = conn.execute(build_sql(schema, fn, args, params, composite, single), (json.dumps(args),)).fetchone()
            conn.execute("COMMIT")
            return 200, row[2]
        except psycopg.Error as e:
            conn.execute("ROLLBACK")
            return http_status(e.sqlstate, role), {"code": e.sqlstate, "message": e.diag.message_primary,
                                                   "details": e.diag.message_detail, "hint": e.diag.message_hint}
    finally:
        conn.close()

"""How the product's FastAPI backend adopts pg_billing: every endpoint is a thin call into the database.

Run: PG_BILLING_DSN=... SUPABASE_JWT_SECRET=... STRIPE_API_KEY=... uvicorn app:app
(`create_app` takes the same settings as arguments, which is what the tests use.)

Connections go through a psycopg 3 async pool configured for transaction poolers (Supavisor or
PgBouncer in transaction mode): no prepared statements, no session state; identity is set per
transaction with transaction-local settings only.
"""
import asyncio
import json
import os
import pathlib
import re
import uuid
from contextlib import asynccontextmanager

import jwt
import psycopg
import stripe
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

# SQLSTATE -> HTTP status for the errors the backend passes on (README "Errors").
STATUS = {"PT402": 402, "PT429": 429, "42501": 403, "22023": 400, "22P02": 400, "PT409": 409, "PT404": 404,
          "PT410": 410}


class CheckoutRequest(BaseModel):
    price_id: str = Field(min_length=1, max_length=255)
    quantity: int = Field(default=1, ge=1, le=100)
    account_id: uuid.UUID | None = None  # a team account the user owns or administers; None: their own


class ChatRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=100_000)
    model: str = Field(default="echo-1", min_length=1, max_length=200)  # priced in billing.model_prices
    max_tokens: int = Field(default=256, ge=1, le=100_000)
    account_id: uuid.UUID | None = None  # spend from a team account the user is a member of


class TeamRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class PromoRequest(BaseModel):
    code: str = Field(min_length=1, max_length=64)


class PortalRequest(BaseModel):
    account_id: uuid.UUID | None = None


class MemberRequest(BaseModel):
    user_id: uuid.UUID
    role: str = "member"
    spend_limit: int | None = Field(default=None, ge=0)
    spend_limit_period: str = "month"


def fake_model_reply(prompt: str, max_tokens: int) -> list[str]:
    """Stands in for the LLM: one "token" per word, at most max_tokens."""
    words = (f"echo: {prompt} " * 50).split()
    return words[:max(1, min(max_tokens, len(prompt.split()) * 3))]


def create_app(dsn: str, jwt_secret: str, stripe_client: stripe.StripeClient, webhook_secret: str | None = None,
               site_url: str = "http://localhost:3000", token_delay: float = 0.0,
               web_dir: str | os.PathLike | None = None) -> FastAPI:
    """web_dir: the built web app (examples/web/dist), served at / with every non-API path
    answered by its index.html (the app routes in the browser)."""
    pool = AsyncConnectionPool(dsn, open=False, min_size=1, max_size=10,
                               kwargs={"prepare_threshold": None, "autocommit": False})

    @asynccontextmanager
    async def lifespan(app):
        await pool.open()
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    def current_user(authorization: str = Header(default="")) -> dict:
        """The Supabase access token's claims (HS256 with the project's JWT secret)."""
        if not authorization.startswith("Bearer "):
            raise HTTPException(401, "missing bearer token")
        try:
            claims = jwt.decode(authorization[7:], jwt_secret, algorithms=["HS256"], audience="authenticated")
            uuid.UUID(claims["sub"])
        except (jwt.PyJWTError, KeyError, ValueError) as e:
            raise HTTPException(401, f"invalid token: {e}") from e
        return claims

    def db_error(e: psycopg.Error) -> JSONResponse:
        status = STATUS.get(e.sqlstate or "", 500)
        headers = {}
        retry = re.search(r"retry after (\d+)s", e.diag.message_detail or "") if e.sqlstate == "PT429" else None
        if retry:
            headers["Retry-After"] = retry.group(1)
        return JSONResponse({"code": e.sqlstate, "message": e.diag.message_primary, "details": e.diag.message_detail,
                             "hint": e.diag.message_hint}, status_code=status, headers=headers)

    @app.exception_handler(psycopg.Error)
    async def database_error(request: Request, e: psycopg.Error) -> JSONResponse:
        """Any endpoint's database error as its SQLSTATE's HTTP status (the webhook answers its own)."""
        return db_error(e)

    @app.post("/api/payments/webhook")
    async def stripe_webhook(request: Request, stripe_signature: str = Header(default="")):
        raw = await request.body()  # the exact bytes Stripe signed: never parse before verifying
        try:
            payload = raw.decode("utf-8")
        except UnicodeDecodeError:
            return JSONResponse({"error": "body is not UTF-8"}, status_code=400)
        try:
            async with pool.connection() as conn:
                async with conn.transaction():
                    if webhook_secret:
                        cur = await conn.execute("select billing.handle_stripe_webhook(%s, %s, %s)",
                                                 (payload, stripe_signature, webhook_secret))
                    else:  # the secret comes from Vault or billing.webhook_secrets
                        cur = await conn.execute("select billing.handle_stripe_webhook(%s, %s)", (payload, stripe_signature))
                    outcome = (await cur.fetchone())[0]
        except psycopg.Error as e:
            if e.sqlstate in ("PT400", "22023"):
                return JSONResponse({"error": e.diag.message_primary, "detail": e.diag.message_detail}, status_code=400)
            # PT500 (no secret), deadlocks, lost connections: nothing was recorded; 5xx so Stripe retries
            return JSONResponse({"error": e.diag.message_primary if e.diag else str(e)}, status_code=503)
        # Answered only after the transaction committed. `failed`: kept in the inbox with its error
        # (unknown price or user, amount mismatch): 5xx so Stripe delivers it again, and the next
        # delivery applies it once the cause is fixed. processed, duplicate, ignored, stale: 2xx.
        return JSONResponse(outcome, status_code=503 if outcome["outcome"] == "failed" else 200)

    @app.post("/api/payments/create-checkout")
    async def create_checkout(body: CheckoutRequest, user: dict = Depends(current_user)):
        async with pool.connection() as conn:
            cur = await conn.execute(
                "select 'payment' from billing.token_packs where stripe_price_id = %(p)s and active"
                " union all select 'subscription' from billing.plans where stripe_price_id = %(p)s and active",
                {"p": body.price_id})
            row = await cur.fetchone()
        if row is None:
            raise HTTPException(400, "unknown price")
        mode = row[0]
        quantity = body.quantity if mode == "payment" else 1
        metadata = {"user_id": user["sub"], "price_id": body.price_id, "quantity": str(quantity)}
        payer = {"user_id": user["sub"]}
        if body.account_id:
            # The webhook credits the team only if this user owns or administers it; asking first
            # turns a purchase that would fail into a 403 before anyone pays.
            accounts = await as_user(user, "select role from billing.get_accounts() where account_id = %s",
                                     (body.account_id,))
            if not accounts or accounts[0][0] not in ("owner", "admin"):
                raise HTTPException(403, "only an owner or admin of the account can buy for it")
            metadata["account_id"] = payer["account_id"] = str(body.account_id)
        params = {
            "mode": mode,
            "line_items": [{"price": body.price_id, "quantity": quantity}],
            "client_reference_id": user["sub"],
            "metadata": metadata,
            "success_url": f"{site_url}/billing?checkout=success",
            "cancel_url": f"{site_url}/billing?checkout=cancel",
        }
        if mode == "subscription":
            params["subscription_data"] = {"metadata": payer}
        session = await asyncio.to_thread(stripe_client.v1.checkout.sessions.create, params)
        return {"id": session.id, "url": session.url}

    @app.post("/api/chat")
    async def chat(body: ChatRequest, request: Request, user: dict = Depends(current_user),
                   idempotency_key: str | None = Header(default=None)):
        """Metered chat: hold the cost of the prompt and the most output it may produce at the model's
        price, stream, then charge the tokens really used (at the price the hold kept)."""
        key = idempotency_key or f"chat-{uuid.uuid4()}"
        input_tokens = len(body.prompt.split())  # stands in for the model's tokenizer
        async with pool.connection() as conn:
            cur = await conn.execute("select reservation_id from billing.reserve_llm_usage(%s, %s, %s, %s, %s, %s, %s)",
                                     (user["sub"], body.model, input_tokens, body.max_tokens, key, "15 minutes",
                                      body.account_id))
            reservation = (await cur.fetchone())[0]
            await conn.commit()

        async def settle(sql, args):
            async with pool.connection() as conn:
                await conn.execute(sql, args)
                await conn.commit()

        async def stream():
            produced, done = 0, False
            try:
                for word in fake_model_reply(body.prompt, body.max_tokens):
                    if token_delay:
                        await asyncio.sleep(token_delay)
                    produced += 1
                    yield word + " "
                done = True
            finally:
                # shield: on a client disconnect this runs while the request task is being cancelled
                if done:
                    await asyncio.shield(settle("select billing.commit_llm_usage(%s, %s, %s)",
                                                (reservation, input_tokens, produced)))
                else:
                    await asyncio.shield(settle("select billing.release_reservation(%s)", (reservation,)))

        return StreamingResponse(stream(), media_type="text/plain", headers={"X-Reservation-Id": str(reservation)})

    async def as_user(user: dict, sql: str, args=()):
        """Runs a query as the user, so row-level security applies (transaction-local only)."""
        async with pool.connection() as conn:
            async with conn.transaction():
                await conn.execute("select set_config('role', 'authenticated', true),"
                                   " set_config('request.jwt.claims', %s, true)", (json.dumps(user),))
                cur = await conn.execute(sql, args)
                return await cur.fetchall()

    @app.get("/api/billing/summary")
    @app.get("/api/billing/subscription")
    async def summary(user: dict = Depends(current_user), account_id: uuid.UUID | None = None):
        """Balance (spendable), reserved, debt, the breakdown by expiry, the plan and its renewal."""
        return (await as_user(user, "select billing.get_billing_summary(%s)", (account_id,)))[0][0]

    @app.get("/api/billing/catalog")
    async def catalog(user: dict = Depends(current_user)):
        """What the billing page offers: active packs and plans (the catalog tables users may read)."""
        packs = await as_user(user, "select stripe_price_id, name, tokens, price_amount, currency"
                                    " from billing.token_packs where active order by price_amount, id")
        plans = await as_user(user, "select stripe_price_id, name, code, tokens_per_period, price_amount, currency"
                                    " from billing.plans where active order by price_amount, id")
        return {"packs": [{"price_id": p, "name": n, "tokens": t, "price_amount": a, "currency": c}
                          for p, n, t, a, c in packs],
                "plans": [{"price_id": p, "name": n, "code": code, "tokens_per_period": t, "price_amount": a,
                           "currency": c} for p, n, code, t, a, c in plans]}

    @app.get("/api/billing/grants")
    async def grants(user: dict = Depends(current_user), limit: int = Query(default=10, ge=1, le=500),
                     offset: int = Query(default=0, ge=0), account_id: uuid.UUID | None = None):
        rows = await as_user(user, "select row_to_json(g) from billing.get_grant_history(%s, %s, %s) g",
                             (limit, offset, account_id))
        return [r[0] for r in rows]

    @app.get("/api/billing/payments")
    async def payments(user: dict = Depends(current_user), limit: int = Query(default=10, ge=1, le=500),
                       offset: int = Query(default=0, ge=0), account_id: uuid.UUID | None = None):
        """Stripe events with their amounts and, for invoices, Stripe's hosted page and PDF."""
        rows = await as_user(user, "select row_to_json(p) from billing.get_payment_history(%s, %s, %s) p",
                             (limit, offset, account_id))
        return [r[0] for r in rows]

    @app.post("/api/billing/promo")
    async def redeem_promo(body: PromoRequest, user: dict = Depends(current_user)):
        rows = await as_user(user, "select row_to_json(r) from billing.redeem_promo_code(%s) r", (body.code,))
        return rows[0][0]

    @app.post("/api/payments/portal")
    async def billing_portal(body: PortalRequest, user: dict = Depends(current_user)):
        """Stripe's Customer Portal (invoices, payment methods, cancelling) for the caller's customer,
        or a team's for its owners and admins."""
        account = body.account_id or uuid.UUID(user["sub"])
        if body.account_id:
            accounts = await as_user(user, "select role from billing.get_accounts() where account_id = %s",
                                     (body.account_id,))
            if not accounts or accounts[0][0] not in ("owner", "admin"):
                raise HTTPException(403, "only an owner or admin of the account manages its billing")
        async with pool.connection() as conn:
            cur = await conn.execute("select stripe_customer_id from billing.stripe_customers where account_id = %s",
                                     (account,))
            row = await cur.fetchone()
        if row is None:
            raise HTTPException(404, "no Stripe customer yet: the portal opens after a first purchase")
        session = await asyncio.to_thread(stripe_client.v1.billing_portal.sessions.create,
                                          {"customer": row[0], "return_url": f"{site_url}/billing"})
        return {"url": session.url}

    @app.get("/api/billing/usage")
    async def usage(user: dict = Depends(current_user), bucket: str = "day", group_by: str | None = None,
                    days: int = Query(default=30, ge=1, le=3660), account_id: uuid.UUID | None = None):
        rows = await as_user(user, "select bucket, group_key, tokens, requests, input_tokens, output_tokens,"
                                   " cached_input_tokens from billing.get_usage_history("
                                   "p_from => now() - make_interval(days => %s), p_bucket => %s, p_group_by => %s,"
                                   " p_account_id => %s)",
                             (days, bucket, group_by, account_id))
        return [{"bucket": b.isoformat(), "group": g, "tokens": t, "requests": r, "input_tokens": i, "output_tokens": o,
                 "cached_input_tokens": c} for b, g, t, r, i, o, c in rows]

    # Team accounts: each call runs as the user, so the database decides who may do what.
    @app.get("/api/accounts")
    async def accounts(user: dict = Depends(current_user)):
        rows = await as_user(user, "select row_to_json(a) from billing.get_accounts() a")
        return [r[0] for r in rows]

    @app.post("/api/accounts")
    async def create_team(body: TeamRequest, user: dict = Depends(current_user)):
        return {"account_id": (await as_user(user, "select billing.create_team_account(%s)", (body.name,)))[0][0]}

    @app.put("/api/accounts/{account_id}/members")
    async def put_member(account_id: uuid.UUID, body: MemberRequest, user: dict = Depends(current_user)):
        rows = await as_user(user, "select row_to_json(m) from billing.add_account_member(%s, %s, %s, %s, %s) m",
                             (account_id, body.user_id, body.role, body.spend_limit, body.spend_limit_period))
        return rows[0][0]

    @app.delete("/api/accounts/{account_id}/members/{member_id}")
    async def delete_member(account_id: uuid.UUID, member_id: uuid.UUID, user: dict = Depends(current_user)):
        removed = (await as_user(user, "select billing.remove_account_member(%s, %s)", (account_id, member_id)))[0][0]
        return {"removed": removed}

    if web_dir:
        web = pathlib.Path(web_dir)
        app.mount("/assets", StaticFiles(directory=web / "assets"), name="assets")

        @app.get("/{path:path}", include_in_schema=False)
        async def web_app(path: str):
            if path.startswith("api/"):
                raise HTTPException(404)
            return FileResponse(web / "index.html")

    return app


def app_from_env() -> FastAPI:
    return create_app(os.environ["PG_BILLING_DSN"], os.environ["SUPABASE_JWT_SECRET"],
                      stripe.StripeClient(os.environ["STRIPE_API_KEY"]), os.environ.get("STRIPE_WEBHOOK_SECRET"),
                      site_url=os.environ.get("SITE_URL", "http://localhost:3000"), web_dir=os.environ.get("WEB_DIR"))


if os.environ.get("PG_BILLING_DSN"):
    app = app_from_env()

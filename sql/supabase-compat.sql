-- supabase-compat.sql: Supabase's roles, auth schema and Vault, for plain PostgreSQL.
--
-- Idempotent, and a no-op where Supabase already provides an object: every object is created only
-- when missing, and existing ones are never altered. Run it as a superuser BEFORE
-- `CREATE EXTENSION pg_billing` (or run `select billing_internal.setup_roles();` afterwards).
-- Sources: supabase/postgres migrations/db/init-scripts/00000000000000-initial-schema.sql and
-- migrations/db/migrations, supabase/auth migrations (auth.uid/role/email/jwt), supabase/vault 0.3.0.

-- Roles, with the attributes they end up with after Supabase's migrations:
-- anon/authenticated/service_role NOLOGIN INHERIT, service_role BYPASSRLS,
-- authenticator LOGIN NOINHERIT and a member of the three.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin inherit;
    alter role anon set statement_timeout = '3s';
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin inherit;
    alter role authenticated set statement_timeout = '8s';
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin inherit bypassrls;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    -- Local-only password for tests and the demo (private socket/port); Supabase sets its own.
    create role authenticator login noinherit password 'authenticator';
    alter role authenticator set statement_timeout = '8s';
    alter role authenticator set lock_timeout = '8s';
  end if;
end
$$;
grant anon, authenticated, service_role to authenticator;
-- supabase/postgres 20230201083204: the postgres role is a member of the API roles.
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'postgres') then
    grant anon, authenticated, service_role to postgres;
  end if;
end
$$;

create schema if not exists extensions;
grant usage on schema public to anon, authenticated, service_role;
grant usage on schema extensions to anon, authenticated, service_role;
-- Supabase's default privileges: new objects in public are usable by the API roles.
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

create table if not exists auth.users (
  id                 uuid primary key,
  email              text,
  phone              text,
  role               text,
  raw_app_meta_data  jsonb default '{}'::jsonb,
  raw_user_meta_data jsonb default '{}'::jsonb,
  is_anonymous       boolean not null default false,
  created_at         timestamptz default now(),
  updated_at         timestamptz default now()
);

-- supabase/auth migrations/20220224000811_update_auth_functions.up.sql
do $$
begin
  if pg_catalog.to_regprocedure('auth.uid()') is null then
    create function auth.uid() returns uuid language sql stable as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
      )::uuid
    $f$;
  end if;
  if pg_catalog.to_regprocedure('auth.role()') is null then
    create function auth.role() returns text language sql stable as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
      )::text
    $f$;
  end if;
  if pg_catalog.to_regprocedure('auth.email()') is null then
    create function auth.email() returns text language sql stable as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim.email', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
      )::text
    $f$;
  end if;
  -- supabase/auth migrations/20220531120530_add_auth_jwt_function.up.sql
  if pg_catalog.to_regprocedure('auth.jwt()') is null then
    create function auth.jwt() returns jsonb language sql stable as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
      )::jsonb
    $f$;
  end if;
end
$$;

-- Vault stand-in (names and signatures of supabase/vault 0.3.0). Real Vault encrypts with a key
-- from a C module; this one stores plaintext, so lookup code runs unchanged on plain PostgreSQL.
create schema if not exists vault;
create table if not exists vault.secrets (
  id          uuid primary key default gen_random_uuid(),
  name        text unique,
  description text not null default '',
  secret      text not null,
  key_id      uuid,
  nonce       bytea,
  created_at  timestamptz not null default now(),
  updated_at  timestamptz not null default now()
);
do $$
begin
  if pg_catalog.to_regclass('vault.decrypted_secrets') is null then
    create view vault.decrypted_secrets as
      select id, name, description, secret, secret as decrypted_secret, key_id, nonce, created_at, updated_at
        from vault.secrets;
  end if;
  if pg_catalog.to_regprocedure('vault.create_secret(text, text, text, uuid)') is null then
    create function vault.create_secret(new_secret text, new_name text = null, new_description text = '',
                                        new_key_id uuid = null) returns uuid
    language plpgsql security definer set search_path = pg_catalog, pg_temp as $f$
    declare v_id uuid;
    begin
      insert into vault.secrets (secret, name, description, key_id)
      values (new_secret, new_name, new_description, new_key_id) returning id into v_id;
      return v_id;
    end
    $f$;
  end if;
  if pg_catalog.to_regprocedure('vault.update_secret(uuid, text, text, text, uuid)') is null then
    create function vault.update_secret(secret_id uuid, new_secret text = null, new_name text = null,
                                        new_description text = null, new_key_id uuid = null) returns void
    language plpgsql security definer set search_path = pg_catalog, pg_temp as $f$
    begin
      update vault.secrets
         set secret = coalesce(new_secret, secret), name = coalesce(new_name, name),
             description = coalesce(new_description, description), key_id = coalesce(new_key_id, key_id),
             updated_at = now()
       where id = secret_id;
    end
    $f$;
  end if;
end
$$;
revoke all on schema vault from public;
revoke all on all tables in schema vault from public;
revoke all on function vault.create_secret(text, text, text, uuid) from public;
revoke all on function vault.update_secret(uuid, text, text, text, uuid) from public;

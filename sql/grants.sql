-- pg_billing: applied last in CREATE EXTENSION (and in every upgrade script), once every function
-- exists. See policies.sql for what billing_internal.setup_roles() grants.
select billing_internal.setup_roles();

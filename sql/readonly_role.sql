-- A least-privilege role for the function: it can log in and read the served columns of
-- `users`, nothing else. Run as the table owner, then give it a password
-- (psql: \password users_reader) or use Cloud SQL IAM database authentication instead.
-- Idempotent: safe to run again.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'users_reader') THEN
        CREATE ROLE users_reader LOGIN;
    END IF;
END
$$;
-- Read-only even if a grant is added by mistake later; a small cap on its connections.
ALTER ROLE users_reader SET default_transaction_read_only = on;
ALTER ROLE users_reader CONNECTION LIMIT 50;
GRANT USAGE ON SCHEMA public TO users_reader;
-- Column-level: columns added later (password hashes...) stay unreadable until granted.
-- Keep this list equal to USERS_COLUMNS.
GRANT SELECT (id, email, name, created_at) ON users TO users_reader;
-- Behind a transaction pooler (PgBouncer, Supavisor, Neon's pooler) the function cannot set these
-- per connection: the role carries them instead (the function warns about each one that is off).
ALTER ROLE users_reader SET statement_timeout = '10s';
ALTER ROLE users_reader SET idle_in_transaction_session_timeout = '10s';
-- Optional, with read replicas: lets the replica-lag check (DB_MAX_REPLICA_LAG) read the WAL
-- receiver's status, so a receiver that runs but is not streaming counts as disconnected.
-- Without it only the receiver's presence is visible (docs/configuration.md#replica-lag).
-- It also shows the role every session's query text in pg_stat_activity: grant it only if
-- that is acceptable.
-- GRANT pg_read_all_stats TO users_reader;

-- Opt-in: a per-table validator for the response cache (docs/cache.md), for clusters where
-- other tables are written all the time. Without it, any write anywhere in the cluster
-- changes the snapshot the function validates with, and every request renders again.
--
-- Every statement that writes `users` (INSERT, UPDATE, DELETE, MERGE, TRUNCATE, COPY) bumps one
-- version row in the same transaction; the function reads that row in the statement that
-- renders, and in its probe. The function stays read-only: it only SELECTs the row. It finds
-- this migration on its first request (restart the function after installing or dropping it).
--
-- Cost to writers: one row update per writing statement, and writers of `users` queue on that
-- row until each commits (BENCHMARKS.md measures it). Writes applied with
-- session_replication_role = replica (logical replication subscribers, some bulk loaders) skip
-- triggers: do not use this migration on a table written that way.
--
-- Run as the table owner; idempotent. Undo: DROP TABLE users_version CASCADE;
-- DROP FUNCTION users_version_bump();
CREATE TABLE IF NOT EXISTS users_version (
    version bigint NOT NULL,
    one boolean PRIMARY KEY DEFAULT true CHECK (one)  -- a single row
);
INSERT INTO users_version (version) VALUES (0) ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION users_version_bump() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE users_version SET version = version + 1;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER users_version_bump
AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON users
FOR EACH STATEMENT EXECUTE FUNCTION users_version_bump();

-- The function's role (sql/readonly_role.sql) reads the version row.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'users_reader') THEN
        GRANT SELECT ON users_version TO users_reader;
    END IF;
END
$$;

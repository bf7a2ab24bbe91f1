-- The bookkeeping of the numbered migrations (storage/migrations.py); the migrations themselves are the files in migrations/.
-- Named blocks (loaded by storage/sql/__init__.py), run only by the module named above.

-- create_migrations_table --
CREATE TABLE IF NOT EXISTS broker_schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- migration_lock --
-- Serialises migrations across nodes; released when the migrating connection's transaction ends.
SELECT pg_advisory_xact_lock(hashtext('broker.migrations'))

-- applied_migrations --
SELECT version FROM broker_schema_migrations

-- record_migration --
INSERT INTO broker_schema_migrations (version) VALUES ($1)

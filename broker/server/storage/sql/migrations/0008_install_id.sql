-- This install's id: made once, with the storage, and shared by every node on it. Each user
-- the broker creates on a target is marked with it (engines/), so reconciliation drops only
-- this install's users, never another broker's or Vault's that look alike (v_...).
CREATE TABLE broker_install (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    install_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO broker_install (install_id)
VALUES (substr(md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text), 1, 16));

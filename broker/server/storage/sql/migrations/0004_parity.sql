-- Vault parity: static roles, root rotation, password policies, lease tidy, wrapping.

-- Static roles: one existing database account whose password the broker rotates. The
-- password, and a new one while a rotation is in flight, are barrier ciphertext. A rotation
-- stores the new password as pending before it changes the account, so a crash at any point
-- is finished (or retried) by whichever node claims the row next; the password served stays
-- the old one until the change is confirmed.
CREATE TABLE broker_static_roles (
    mount               text NOT NULL REFERENCES broker_mounts (path) ON DELETE CASCADE,
    name                text NOT NULL,
    db_name             text NOT NULL,
    username            text NOT NULL,
    rotation_period     integer NOT NULL DEFAULT 0,    -- seconds; 0 when a schedule is used
    rotation_schedule   text NOT NULL DEFAULT '',      -- cron, five fields
    rotation_window     integer NOT NULL DEFAULT 0,    -- seconds after a scheduled time
    rotation_statements text[] NOT NULL DEFAULT '{}',
    password            text NOT NULL DEFAULT '',
    pending_password    text,
    last_rotation       timestamptz,
    next_rotation       timestamptz NOT NULL DEFAULT now(),
    attempts            integer NOT NULL DEFAULT 0,
    last_error          text,
    PRIMARY KEY (mount, name),
    UNIQUE (mount, db_name, username)
);
CREATE INDEX broker_static_roles_due_idx ON broker_static_roles (next_rotation);

-- A connection's own admin password while rotate-root is changing it (ciphertext).
ALTER TABLE broker_connections ADD COLUMN pending_password text;

CREATE TABLE broker_password_policies (
    name       text PRIMARY KEY,
    policy     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Response wrapping: a single-use token (kept as an HMAC) for one stored response
-- (ciphertext), until unwrapped or expired.
CREATE TABLE broker_wrapped_responses (
    token_hmac    bytea PRIMARY KEY,
    accessor      text NOT NULL UNIQUE,
    response      text NOT NULL,
    creation_path text NOT NULL,
    ttl           integer NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX broker_wrapped_responses_expiry_idx ON broker_wrapped_responses (expires_at);

-- Tidy finds finished leases by when they finished, without touching live ones.
CREATE INDEX broker_leases_finished_idx ON broker_leases ((coalesce(revoked_at, expires_at)))
    WHERE state IN ('revoked', 'failed');

-- The broker's own state: secrets engine mounts, database connections, roles and leases.
-- Forward-only; applied once, in one transaction, under an advisory lock (broker/migrations.py).

CREATE TABLE broker_mounts (
    path        text PRIMARY KEY,          -- without the trailing slash, e.g. 'database'
    type        text NOT NULL,
    description text NOT NULL DEFAULT '',
    accessor    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE broker_connections (
    mount             text NOT NULL REFERENCES broker_mounts (path) ON DELETE CASCADE,
    name              text NOT NULL,
    plugin_name       text NOT NULL,
    connection_url    text NOT NULL,       -- with {{username}}/{{password}} placeholders, never filled
    username          text NOT NULL DEFAULT '',
    password          text NOT NULL DEFAULT '',  -- the target admin password (encrypted by the security work)
    allowed_roles     text[] NOT NULL DEFAULT '{}',
    username_template text NOT NULL DEFAULT '',
    verify_connection boolean NOT NULL DEFAULT true,
    options           jsonb NOT NULL DEFAULT '{}',
    version           bigint NOT NULL DEFAULT 1,  -- bumped on every write so nodes rebuild their pools
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mount, name)
);

CREATE TABLE broker_roles (
    mount                 text NOT NULL REFERENCES broker_mounts (path) ON DELETE CASCADE,
    name                  text NOT NULL,
    db_name               text NOT NULL,
    creation_statements   text[] NOT NULL DEFAULT '{}',
    revocation_statements text[] NOT NULL DEFAULT '{}',
    rollback_statements   text[] NOT NULL DEFAULT '{}',
    renew_statements      text[] NOT NULL DEFAULT '{}',
    default_ttl           integer NOT NULL DEFAULT 0,   -- seconds; 0 = the server default
    max_ttl               integer NOT NULL DEFAULT 0,   -- seconds; 0 = the server maximum
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mount, name)
);

-- One row per issued login. Written in state 'creating' before the user exists on the target,
-- so a crash at any point leaves a row that the sweep revokes. Holds everything revocation
-- needs (username, plugin, connection, statements) so it works after the role is deleted.
-- Never holds the password.
CREATE TABLE broker_leases (
    lease_id              text COLLATE "C" PRIMARY KEY,  -- "C" so LIKE 'prefix%' uses the index
    mount                 text NOT NULL,
    role_name             text NOT NULL,
    connection_name       text NOT NULL,
    plugin_name           text NOT NULL,
    username              text NOT NULL,
    revocation_statements text[] NOT NULL DEFAULT '{}',
    renew_statements      text[] NOT NULL DEFAULT '{}',
    issued_at             timestamptz NOT NULL DEFAULT now(),
    last_renewed_at       timestamptz,
    expires_at            timestamptz NOT NULL,
    max_expires_at        timestamptz NOT NULL,
    state                 text NOT NULL DEFAULT 'creating'
                          CHECK (state IN ('creating', 'active', 'revoking', 'revoked', 'failed')),
    -- When the sweep must next look at the row: the expiry while active, the retry time while
    -- revoking, the end of a claim's visibility window while a node works on it.
    due_at                timestamptz NOT NULL,
    attempts              integer NOT NULL DEFAULT 0,
    last_error            text,
    revoked_at            timestamptz
);

-- The sweep's only access path: due rows that still need work. Small however many
-- revoked rows pile up.
CREATE INDEX broker_leases_due_idx ON broker_leases (due_at)
    WHERE state IN ('creating', 'active', 'revoking');

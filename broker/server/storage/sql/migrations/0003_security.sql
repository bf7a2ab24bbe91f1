-- Security: the sealed keyring, tokens, policies, auth methods (AppRole), audit devices,
-- and the link from each lease to the token that asked for it.

-- One row once initialised. The keyring (data keys by term, the HMAC keys) is AES-256-GCM
-- ciphertext under the root key, which is never stored in plain text: Shamir shares of it
-- go to the operators, and with an auto-unseal the root key is stored wrapped by a key kept
-- outside this database (a file or an environment variable).
CREATE TABLE broker_seal (
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    secret_shares    integer NOT NULL,
    secret_threshold integer NOT NULL,
    keyring          bytea NOT NULL,
    keyring_version  bigint NOT NULL DEFAULT 1,   -- optimistic concurrency between nodes
    wrapped_root_key bytea,                       -- auto-unseal only
    initialized_at   timestamptz NOT NULL DEFAULT now()
);

-- Tokens by accessor; the token itself is kept only as an HMAC under a keyring key.
CREATE TABLE broker_tokens (
    accessor          text PRIMARY KEY,
    token_hmac        bytea NOT NULL UNIQUE,
    parent_accessor   text REFERENCES broker_tokens (accessor) ON DELETE CASCADE,  -- children die too
    policies          text[] NOT NULL DEFAULT '{}',
    display_name      text NOT NULL DEFAULT '',
    meta              jsonb NOT NULL DEFAULT '{}',
    num_uses          integer NOT NULL DEFAULT 0,  -- as created; 0 = unlimited
    uses_left         integer NOT NULL DEFAULT 0,
    ttl               integer NOT NULL DEFAULT 0,  -- seconds; 0 = no expiry (root)
    explicit_max_ttl  integer NOT NULL DEFAULT 0,
    renewable         boolean NOT NULL DEFAULT true,
    path              text NOT NULL DEFAULT 'auth/token/create',
    bound_cidrs       text[] NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz,                 -- NULL: never
    max_expires_at    timestamptz
);
CREATE INDEX broker_tokens_parent_idx ON broker_tokens (parent_accessor);
CREATE INDEX broker_tokens_expiry_idx ON broker_tokens (expires_at) WHERE expires_at IS NOT NULL;

-- ACL policies as written (HCL or JSON); parsed and checked on write.
CREATE TABLE broker_policies (
    name       text PRIMARY KEY,
    policy     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Auth methods enabled under auth/ (the token method is always there).
CREATE TABLE broker_auth_methods (
    path        text PRIMARY KEY,             -- without the trailing slash, e.g. 'approle'
    type        text NOT NULL,
    description text NOT NULL DEFAULT '',
    accessor    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE broker_approle_roles (
    mount                 text NOT NULL REFERENCES broker_auth_methods (path) ON DELETE CASCADE,
    name                  text NOT NULL,
    role_id               text NOT NULL,
    bind_secret_id        boolean NOT NULL DEFAULT true,
    token_policies        text[] NOT NULL DEFAULT '{}',
    token_ttl             integer NOT NULL DEFAULT 0,
    token_max_ttl         integer NOT NULL DEFAULT 0,
    token_num_uses        integer NOT NULL DEFAULT 0,
    token_bound_cidrs     text[] NOT NULL DEFAULT '{}',
    secret_id_ttl         integer NOT NULL DEFAULT 0,
    secret_id_num_uses    integer NOT NULL DEFAULT 0,
    secret_id_bound_cidrs text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (mount, name),
    UNIQUE (mount, role_id)
);

-- Secret IDs, kept only as an HMAC; uses_left 0 with num_uses > 0 means spent.
CREATE TABLE broker_approle_secret_ids (
    secret_id_hmac bytea PRIMARY KEY,
    accessor       text NOT NULL UNIQUE,
    mount          text NOT NULL,
    role_name      text NOT NULL,
    num_uses       integer NOT NULL DEFAULT 0,
    uses_left      integer NOT NULL DEFAULT 0,
    cidr_list      text[] NOT NULL DEFAULT '{}',
    metadata       jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz,
    FOREIGN KEY (mount, role_name) REFERENCES broker_approle_roles (mount, name) ON DELETE CASCADE
);

CREATE TABLE broker_audit_devices (
    path        text PRIMARY KEY,
    type        text NOT NULL CHECK (type IN ('file', 'table')),
    description text NOT NULL DEFAULT '',
    options     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The 'table' audit device: one hash chain per device and node (nodes write concurrently).
CREATE TABLE broker_audit_log (
    id         bigserial PRIMARY KEY,
    device     text NOT NULL,
    node_id    text NOT NULL,
    entry      text NOT NULL,  -- the JSON line exactly as hashed
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX broker_audit_log_chain_idx ON broker_audit_log (device, node_id, id);

ALTER TABLE broker_leases ADD COLUMN token_accessor text;
CREATE INDEX broker_leases_token_idx ON broker_leases (token_accessor)
    WHERE token_accessor IS NOT NULL AND state IN ('creating', 'active');
-- Lease quotas count a role's live leases.
CREATE INDEX broker_leases_role_live_idx ON broker_leases (mount, role_name)
    WHERE state IN ('creating', 'active', 'revoking');

ALTER TABLE broker_roles ADD COLUMN orphan_leases boolean NOT NULL DEFAULT false;
ALTER TABLE broker_roles ADD COLUMN max_leases integer NOT NULL DEFAULT 0;

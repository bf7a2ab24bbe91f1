-- The configuration and roles of the Kubernetes and JWT/OIDC auth methods. Each row's body
-- is the JSON the method keeps, sealed under the keyring (AES-256-GCM) with the row's key as
-- associated data: the config holds secrets (a token reviewer JWT) and the roles decide
-- which policies a login gets, so a storage writer can neither read the one nor edit or
-- move the other. Rows go with their auth method.
CREATE TABLE broker_auth_entries (
    mount      text NOT NULL REFERENCES broker_auth_methods (path) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('config', 'role')),
    name       text NOT NULL,
    body       text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mount, kind, name)
);

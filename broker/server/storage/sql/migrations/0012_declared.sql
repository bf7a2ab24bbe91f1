-- What the declarative section of the configuration applied (server/bootstrap/): one row
-- per object it created or adopted. ``applied`` holds the values it wrote last, sealed
-- under the keyring like every catalog secret (statements and URLs are not secrets, but
-- nothing here needs to be readable without the keys); ``secret_hmac`` the keyed hash of
-- the secret it wrote (a connection password), never the secret. The next apply compares
-- storage with both: a value that differs from the file but not from ``applied`` changed in
-- the file; one that differs from ``applied`` changed outside it (drift). Only objects with
-- a row here are ever deleted by an apply, and only when the file prunes their kind.
CREATE TABLE broker_declared (
    kind        text NOT NULL,
    path        text NOT NULL,
    applied     text NOT NULL,
    secret_hmac text NOT NULL DEFAULT '',
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, path)
);

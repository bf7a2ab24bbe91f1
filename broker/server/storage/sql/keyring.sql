-- The seal record and the keyring (storage/keyring.py), and re-encryption under its active term.
-- Named blocks (loaded by storage/sql/__init__.py), run only by the module named above.

-- get_seal --
SELECT secret_shares, secret_threshold, keyring, keyring_version, wrapped_root_key,
       initialized_at
FROM broker_seal

-- insert_seal --
-- Initialisation happens once: a second, racing init inserts nothing.
INSERT INTO broker_seal (secret_shares, secret_threshold, keyring, wrapped_root_key)
VALUES ($1, $2, $3, $4)
ON CONFLICT (singleton) DO NOTHING
RETURNING initialized_at

-- update_keyring --
-- Rotation: only over the version this node read, so two nodes never lose a key term.
UPDATE broker_seal SET keyring = $2, keyring_version = keyring_version + 1
WHERE keyring_version = $1
RETURNING keyring_version

-- update_connection_password --
-- The re-encrypt job: compare-and-set, so a concurrent write of a new password wins.
UPDATE broker_connections SET password = $4
WHERE mount = $1 AND name = $2 AND password = $3

-- list_connection_ciphertexts --
-- The re-encrypt job's scan: each connection's stored (sealed) password.
SELECT mount, name, password FROM broker_connections ORDER BY mount, name

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
-- The re-encrypt job: compare-and-set, so a concurrent write of a new password wins (every
-- write seals the password afresh). $6: the connection URL sealed afresh; $5: the row's MAC
-- over the new ciphertexts.
UPDATE broker_connections SET password = $4, mac = $5, connection_url = $6
WHERE mount = $1 AND name = $2 AND password = $3

-- list_connection_ciphertexts --
-- The re-encrypt job's scan: each connection's stored (sealed) password, with what its MAC
-- covers (checked before the row is re-sealed, so a tampered row is never laundered).
SELECT mount, name, plugin_name, connection_url, username, password, allowed_roles,
       username_template, verify_connection, options, mac
FROM broker_connections ORDER BY mount, name

-- any_row_mac --
-- The row-authentication upgrade: whether any row already carries a MAC (then a keyring
-- without a row key is a rolled-back keyring, not an install to upgrade).
SELECT EXISTS (SELECT 1 FROM broker_connections WHERE mac IS NOT NULL)
    OR EXISTS (SELECT 1 FROM broker_roles WHERE mac IS NOT NULL)
    OR EXISTS (SELECT 1 FROM broker_static_roles WHERE mac IS NOT NULL)
    OR EXISTS (SELECT 1 FROM broker_password_policies WHERE mac IS NOT NULL)
    OR EXISTS (SELECT 1 FROM broker_policies WHERE mac IS NOT NULL)
    OR EXISTS (SELECT 1 FROM broker_tokens WHERE mac IS NOT NULL)
    OR EXISTS (SELECT 1 FROM broker_approle_roles WHERE mac IS NOT NULL)
    OR EXISTS (SELECT 1 FROM broker_audit_devices WHERE mac IS NOT NULL)
    OR EXISTS (SELECT 1 FROM broker_leases WHERE mac IS NOT NULL)

-- lock_seal --
-- The upgrade holds the seal row while it authenticates, so two nodes never both do it.
SELECT keyring_version FROM broker_seal FOR UPDATE

-- unauthenticated_broker_connections --
-- The upgrade (one block per authenticated table): rows written before rows had MACs.
SELECT mount, name, plugin_name, connection_url, username, password, allowed_roles,
       username_template, verify_connection, options
FROM broker_connections WHERE mac IS NULL

-- unauthenticated_broker_roles --
SELECT mount, name, db_name, creation_statements, revocation_statements, rollback_statements,
       renew_statements, default_ttl, max_ttl, orphan_leases, max_leases
FROM broker_roles WHERE mac IS NULL

-- unauthenticated_broker_static_roles --
SELECT mount, name, db_name, username, rotation_period, rotation_schedule, rotation_window,
       rotation_statements
FROM broker_static_roles WHERE mac IS NULL

-- unauthenticated_broker_password_policies --
SELECT name, policy FROM broker_password_policies WHERE mac IS NULL

-- unauthenticated_broker_policies --
SELECT name, policy FROM broker_policies WHERE mac IS NULL

-- unauthenticated_broker_tokens --
SELECT accessor, token_hmac, parent_accessor, policies, display_name, meta, num_uses, ttl,
       explicit_max_ttl, renewable, path, bound_cidrs, expires_at, max_expires_at, period
FROM broker_tokens WHERE mac IS NULL

-- unauthenticated_broker_approle_roles --
SELECT mount, name, role_id, bind_secret_id, token_policies, token_ttl, token_max_ttl,
       token_num_uses, token_bound_cidrs, secret_id_ttl, secret_id_num_uses,
       secret_id_bound_cidrs, token_period
FROM broker_approle_roles WHERE mac IS NULL

-- unauthenticated_broker_audit_devices --
SELECT path, type, description, options FROM broker_audit_devices WHERE mac IS NULL

-- unauthenticated_broker_leases --
-- Live leases only: a finished one is never revoked or renewed again (and there may be
-- many of them until tidied).
SELECT lease_id, mount, role_name, connection_name, plugin_name, username,
       revocation_statements, renew_statements, issued_at, max_expires_at, token_accessor
FROM broker_leases WHERE mac IS NULL AND state IN ('creating', 'active', 'revoking')

-- authenticate_broker_connections --
-- The upgrade's write (one block per table): $1 the keys' columns, $2 their MACs.
UPDATE broker_connections t SET mac = k.mac
FROM unnest($1::text[], $2::text[], $3::bytea[]) AS k(mount, name, mac)
WHERE t.mount = k.mount AND t.name = k.name AND t.mac IS NULL

-- authenticate_broker_roles --
UPDATE broker_roles t SET mac = k.mac
FROM unnest($1::text[], $2::text[], $3::bytea[]) AS k(mount, name, mac)
WHERE t.mount = k.mount AND t.name = k.name AND t.mac IS NULL

-- authenticate_broker_static_roles --
UPDATE broker_static_roles t SET mac = k.mac
FROM unnest($1::text[], $2::text[], $3::bytea[]) AS k(mount, name, mac)
WHERE t.mount = k.mount AND t.name = k.name AND t.mac IS NULL

-- authenticate_broker_password_policies --
UPDATE broker_password_policies t SET mac = k.mac
FROM unnest($1::text[], $2::bytea[]) AS k(name, mac)
WHERE t.name = k.name AND t.mac IS NULL

-- authenticate_broker_policies --
UPDATE broker_policies t SET mac = k.mac
FROM unnest($1::text[], $2::bytea[]) AS k(name, mac)
WHERE t.name = k.name AND t.mac IS NULL

-- authenticate_broker_tokens --
UPDATE broker_tokens t SET mac = k.mac
FROM unnest($1::text[], $2::bytea[]) AS k(accessor, mac)
WHERE t.accessor = k.accessor AND t.mac IS NULL

-- authenticate_broker_approle_roles --
UPDATE broker_approle_roles t SET mac = k.mac
FROM unnest($1::text[], $2::text[], $3::bytea[]) AS k(mount, name, mac)
WHERE t.mount = k.mount AND t.name = k.name AND t.mac IS NULL

-- authenticate_broker_audit_devices --
UPDATE broker_audit_devices t SET mac = k.mac
FROM unnest($1::text[], $2::bytea[]) AS k(path, mac)
WHERE t.path = k.path AND t.mac IS NULL

-- authenticate_broker_leases --
UPDATE broker_leases t SET mac = k.mac
FROM unnest($1::text[], $2::bytea[]) AS k(lease_id, mac)
WHERE t.lease_id = k.lease_id AND t.mac IS NULL

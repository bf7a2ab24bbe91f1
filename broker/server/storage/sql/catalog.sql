-- The secrets engine's configuration (storage/catalog.py): mounts, connections, roles,
-- static roles and their rotations, password policies.
-- Named blocks (loaded by storage/sql/__init__.py), run only by the module named above.

-- setup_lock --
-- Serialises one-off set-up (dev-mode demo objects) across nodes sharing a storage database.
SELECT pg_advisory_xact_lock(hashtext('broker.setup'))

-- insert_mount --
INSERT INTO broker_mounts (path, type, description, accessor)
VALUES ($1, $2, $3, $4)
ON CONFLICT (path) DO NOTHING
RETURNING path

-- get_mount --
SELECT path, type, description, accessor, created_at FROM broker_mounts WHERE path = $1

-- list_mounts --
SELECT path, type, description, accessor, created_at FROM broker_mounts ORDER BY path

-- delete_mount --
DELETE FROM broker_mounts WHERE path = $1 RETURNING path

-- upsert_connection --
INSERT INTO broker_connections
    (mount, name, plugin_name, connection_url, username, password, allowed_roles,
     username_template, verify_connection, options, mac)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (mount, name) DO UPDATE SET
    plugin_name = EXCLUDED.plugin_name,
    connection_url = EXCLUDED.connection_url,
    username = EXCLUDED.username,
    password = EXCLUDED.password,
    allowed_roles = EXCLUDED.allowed_roles,
    username_template = EXCLUDED.username_template,
    verify_connection = EXCLUDED.verify_connection,
    options = EXCLUDED.options,
    mac = EXCLUDED.mac,
    version = broker_connections.version + 1,
    updated_at = now()

-- get_connection --
SELECT mount, name, plugin_name, connection_url, username, password, allowed_roles,
       username_template, verify_connection, options, version, mac
FROM broker_connections WHERE mount = $1 AND name = $2

-- list_connections --
SELECT name FROM broker_connections WHERE mount = $1 ORDER BY name

-- delete_connection --
DELETE FROM broker_connections WHERE mount = $1 AND name = $2 RETURNING name

-- count_live_leases_of_connection --
SELECT count(*) FROM broker_leases
WHERE mount = $1 AND connection_name = $2 AND state IN ('creating', 'active', 'revoking')

-- lock_connection_for_delete --
-- Held until the deleting transaction ends: an issuance writing its lease row
-- (insert_leases) waits for it, then sees the outcome; the lease count that
-- follows, a new statement, sees every lease row committed before the lock was taken.
SELECT name FROM broker_connections WHERE mount = $1 AND name = $2 FOR UPDATE

-- lock_mount_connections --
-- Disabling a mount: the same lock as lock_connection_for_delete, on each of its connections.
SELECT name FROM broker_connections WHERE mount = $1 ORDER BY name FOR UPDATE

-- count_live_leases_of_mount --
SELECT count(*) FROM broker_leases
WHERE mount = $1 AND state IN ('creating', 'active', 'revoking')

-- live_leases_of_connection --
-- A forced connection delete revokes these first, one by one (a role's db_name may have
-- changed since issuance, so a role's prefix is not the connection's leases).
SELECT lease_id FROM broker_leases
WHERE mount = $1 AND connection_name = $2 AND state IN ('creating', 'active', 'revoking')
ORDER BY lease_id

-- list_all_connections --
SELECT mount, name, plugin_name, connection_url, username, password, allowed_roles,
       username_template, verify_connection, options, version, mac
FROM broker_connections ORDER BY mount, name

-- upsert_role --
INSERT INTO broker_roles
    (mount, name, db_name, creation_statements, revocation_statements, rollback_statements,
     renew_statements, default_ttl, max_ttl, orphan_leases, max_leases, mac)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (mount, name) DO UPDATE SET
    db_name = EXCLUDED.db_name,
    creation_statements = EXCLUDED.creation_statements,
    revocation_statements = EXCLUDED.revocation_statements,
    rollback_statements = EXCLUDED.rollback_statements,
    renew_statements = EXCLUDED.renew_statements,
    default_ttl = EXCLUDED.default_ttl,
    max_ttl = EXCLUDED.max_ttl,
    orphan_leases = EXCLUDED.orphan_leases,
    max_leases = EXCLUDED.max_leases,
    mac = EXCLUDED.mac,
    updated_at = now()

-- get_role --
SELECT mount, name, db_name, creation_statements, revocation_statements, rollback_statements,
       renew_statements, default_ttl, max_ttl, orphan_leases, max_leases, mac
FROM broker_roles WHERE mount = $1 AND name = $2

-- list_roles --
SELECT name FROM broker_roles WHERE mount = $1 ORDER BY name

-- get_issue_context --
-- The role and its connection in one round trip (the issuance hot path).
SELECT r.mount, r.name, r.db_name, r.creation_statements, r.revocation_statements,
       r.rollback_statements, r.renew_statements, r.default_ttl, r.max_ttl,
       r.orphan_leases, r.max_leases, r.mac,
       c.name AS c_name, c.plugin_name AS c_plugin_name, c.connection_url AS c_connection_url,
       c.username AS c_username, c.password AS c_password, c.allowed_roles AS c_allowed_roles,
       c.username_template AS c_username_template,
       c.verify_connection AS c_verify_connection, c.options AS c_options,
       c.version AS c_version, c.mac AS c_mac
FROM broker_roles r
LEFT JOIN broker_connections c ON c.mount = r.mount AND c.name = r.db_name
WHERE r.mount = $1 AND r.name = $2

-- delete_role --
DELETE FROM broker_roles WHERE mount = $1 AND name = $2 RETURNING name

-- set_connection_pending_password --
UPDATE broker_connections SET pending_password = $3 WHERE mount = $1 AND name = $2

-- commit_connection_password --
-- rotate-root confirmed: the pending password becomes the password; the version bump makes
-- every node rebuild its pool with it.
-- $3: the new password, sealed under the connection's own context; $5 the row's MAC over
-- it, computed from the row as read with password $4 (compare-and-set: a concurrent write
-- wins, and the caller reads again).
UPDATE broker_connections
SET password = $3, mac = $5, pending_password = NULL, version = version + 1, updated_at = now()
WHERE mount = $1 AND name = $2 AND pending_password IS NOT NULL AND password = $4

-- connections_with_pending_password --
SELECT mount, name FROM broker_connections WHERE pending_password IS NOT NULL

-- get_connection_pending_password --
SELECT pending_password FROM broker_connections WHERE mount = $1 AND name = $2

-- upsert_static_role --
INSERT INTO broker_static_roles
    (mount, name, db_name, username, rotation_period, rotation_schedule, rotation_window,
     rotation_statements, next_rotation, mac)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (mount, name) DO UPDATE SET
    db_name = EXCLUDED.db_name,
    username = EXCLUDED.username,
    rotation_period = EXCLUDED.rotation_period,
    rotation_schedule = EXCLUDED.rotation_schedule,
    rotation_window = EXCLUDED.rotation_window,
    rotation_statements = EXCLUDED.rotation_statements,
    next_rotation = EXCLUDED.next_rotation,
    mac = EXCLUDED.mac

-- get_static_role --
SELECT mount, name, db_name, username, rotation_period, rotation_schedule, rotation_window,
       rotation_statements, password, pending_password, last_rotation, next_rotation,
       attempts, last_error, mac
FROM broker_static_roles WHERE mount = $1 AND name = $2

-- list_static_roles --
SELECT name FROM broker_static_roles WHERE mount = $1 ORDER BY name

-- delete_static_role --
DELETE FROM broker_static_roles WHERE mount = $1 AND name = $2 RETURNING name

-- try_rotation_lock --
-- Session-level advisory lock on a connection held for the length of one rotation (a
-- static role's or a connection's root password), so two nodes, or the scheduler and an
-- operator, never rotate one account at once. Dies with the session if the node does.
SELECT pg_try_advisory_lock(hashtext('broker_rotation'), hashtext($1))

-- release_rotation_lock --
SELECT pg_advisory_unlock(hashtext('broker_rotation'), hashtext($1))

-- due_static_roles --
-- Due for rotation, or with a rotation left unfinished by a crash.
SELECT mount, name FROM broker_static_roles
WHERE next_rotation <= now() OR pending_password IS NOT NULL
ORDER BY next_rotation
LIMIT $1

-- set_static_pending --
UPDATE broker_static_roles SET pending_password = $3 WHERE mount = $1 AND name = $2

-- commit_static_rotation --
-- $3: the new password, sealed under the role's own context.
UPDATE broker_static_roles
SET password = $3, pending_password = NULL, last_rotation = now(),
    next_rotation = $4, attempts = 0, last_error = NULL
WHERE mount = $1 AND name = $2

-- fail_static_rotation --
-- The pending password stays: the next attempt sets it again (idempotent) before it can be
-- served.
UPDATE broker_static_roles
SET attempts = attempts + 1, last_error = $3, next_rotation = now() + make_interval(secs => $4)
WHERE mount = $1 AND name = $2

-- upsert_password_policy --
INSERT INTO broker_password_policies (name, policy, mac) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET policy = EXCLUDED.policy, mac = EXCLUDED.mac, updated_at = now()

-- get_password_policy --
SELECT name, policy, mac FROM broker_password_policies WHERE name = $1

-- list_password_policies --
SELECT name FROM broker_password_policies ORDER BY name

-- delete_password_policy --
DELETE FROM broker_password_policies WHERE name = $1

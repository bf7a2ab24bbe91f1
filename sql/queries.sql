-- Every DML statement the broker runs against its own storage, as named blocks.
-- broker/sql.py loads them; broker/storage.py is the only module that executes them.

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

-- setup_lock --
-- Serialises one-off set-up (dev-mode demo objects) across nodes sharing a storage database.
SELECT pg_advisory_xact_lock(hashtext('broker.setup'))

-- ping --
SELECT 1

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
     username_template, verify_connection, options)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (mount, name) DO UPDATE SET
    plugin_name = EXCLUDED.plugin_name,
    connection_url = EXCLUDED.connection_url,
    username = EXCLUDED.username,
    password = EXCLUDED.password,
    allowed_roles = EXCLUDED.allowed_roles,
    username_template = EXCLUDED.username_template,
    verify_connection = EXCLUDED.verify_connection,
    options = EXCLUDED.options,
    version = broker_connections.version + 1,
    updated_at = now()

-- get_connection --
SELECT mount, name, plugin_name, connection_url, username, password, allowed_roles,
       username_template, verify_connection, options, version
FROM broker_connections WHERE mount = $1 AND name = $2

-- list_connections --
SELECT name FROM broker_connections WHERE mount = $1 ORDER BY name

-- delete_connection --
DELETE FROM broker_connections WHERE mount = $1 AND name = $2 RETURNING name

-- count_live_leases_of_connection --
SELECT count(*) FROM broker_leases
WHERE mount = $1 AND connection_name = $2 AND state IN ('creating', 'active', 'revoking')

-- upsert_role --
INSERT INTO broker_roles
    (mount, name, db_name, creation_statements, revocation_statements, rollback_statements,
     renew_statements, default_ttl, max_ttl)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (mount, name) DO UPDATE SET
    db_name = EXCLUDED.db_name,
    creation_statements = EXCLUDED.creation_statements,
    revocation_statements = EXCLUDED.revocation_statements,
    rollback_statements = EXCLUDED.rollback_statements,
    renew_statements = EXCLUDED.renew_statements,
    default_ttl = EXCLUDED.default_ttl,
    max_ttl = EXCLUDED.max_ttl,
    updated_at = now()

-- get_role --
SELECT mount, name, db_name, creation_statements, revocation_statements, rollback_statements,
       renew_statements, default_ttl, max_ttl
FROM broker_roles WHERE mount = $1 AND name = $2

-- list_roles --
SELECT name FROM broker_roles WHERE mount = $1 ORDER BY name

-- get_issue_context --
-- The role and its connection in one round trip (the issuance hot path).
SELECT r.mount, r.name, r.db_name, r.creation_statements, r.revocation_statements,
       r.rollback_statements, r.renew_statements, r.default_ttl, r.max_ttl,
       c.name AS c_name, c.plugin_name AS c_plugin_name, c.connection_url AS c_connection_url,
       c.username AS c_username, c.password AS c_password, c.allowed_roles AS c_allowed_roles,
       c.username_template AS c_username_template,
       c.verify_connection AS c_verify_connection, c.options AS c_options,
       c.version AS c_version
FROM broker_roles r
LEFT JOIN broker_connections c ON c.mount = r.mount AND c.name = r.db_name
WHERE r.mount = $1 AND r.name = $2

-- delete_role --
DELETE FROM broker_roles WHERE mount = $1 AND name = $2 RETURNING name

-- insert_leases --
-- $12: when the sweep takes over if creation never finishes (a crashed creator): the
-- sooner of the expiry and the creation timeout.
-- Many leases in one statement (group commit); the arrays are parallel columns, and each
-- lease's statement lists travel as a JSON array (lists of different lengths).
INSERT INTO broker_leases
    (lease_id, mount, role_name, connection_name, plugin_name, username,
     revocation_statements, renew_statements, issued_at, expires_at, max_expires_at, due_at)
SELECT l.lease_id, l.mount, l.role_name, l.connection_name, l.plugin_name, l.username,
       ARRAY(SELECT jsonb_array_elements_text(l.revocation::jsonb)),
       ARRAY(SELECT jsonb_array_elements_text(l.renew::jsonb)),
       l.issued_at, l.expires_at, l.max_expires_at, l.due_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[],
            $12::timestamptz[])
    AS l(lease_id, mount, role_name, connection_name, plugin_name, username, revocation, renew,
         issued_at, expires_at, max_expires_at, due_at)

-- activate_leases --
-- Only a lease still 'creating' becomes active: if a revocation claimed it meanwhile, the
-- creator sees no row and must remove the user it just made. Group commit: many at once.
UPDATE broker_leases SET state = 'active', due_at = expires_at
WHERE lease_id = ANY($1::text[]) AND state = 'creating'
RETURNING lease_id

-- notify_catalog_changed --
SELECT pg_notify('broker_catalog', '')

-- mark_lease_failed --
UPDATE broker_leases SET state = 'failed', last_error = $2, revoked_at = now()
WHERE lease_id = $1

-- reopen_lease --
-- A lease revoked while its user was still being created: revoke once more, now.
UPDATE broker_leases SET state = 'revoking', due_at = now(), revoked_at = NULL
WHERE lease_id = $1

-- get_lease --
SELECT lease_id, mount, role_name, connection_name, plugin_name, username,
       revocation_statements, renew_statements, issued_at, last_renewed_at, expires_at,
       max_expires_at, state, due_at, attempts, last_error, revoked_at
FROM broker_leases WHERE lease_id = $1

-- renew_lease --
UPDATE broker_leases SET expires_at = $2, due_at = $2, last_renewed_at = now()
WHERE lease_id = $1 AND state = 'active'
RETURNING lease_id

-- claim_due_leases --
-- $1 batch size, $2 seconds the claim hides the row from other sweeps (a node that dies
-- mid-revocation releases it that way), $3 LIKE pattern on lease_id ('%' for all).
WITH due AS (
    SELECT lease_id, state FROM broker_leases
    WHERE state IN ('creating', 'active', 'revoking') AND due_at <= now() AND lease_id LIKE $3
    ORDER BY due_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE broker_leases AS l
SET state = 'revoking', due_at = now() + make_interval(secs => $2), attempts = l.attempts + 1
FROM due
WHERE l.lease_id = due.lease_id
RETURNING l.lease_id, l.mount, l.role_name, l.connection_name, l.plugin_name, l.username,
          l.revocation_statements, l.issued_at, l.expires_at, l.attempts,
          due.state AS prior_state

-- make_leases_due --
-- Revocation by id or prefix: every live lease under the pattern becomes due now, so the
-- same claim path revokes it whether the request or the scheduler gets there first.
UPDATE broker_leases SET due_at = now()
WHERE lease_id LIKE $1 AND state IN ('creating', 'active', 'revoking')

-- count_pending_leases --
SELECT count(*) FROM broker_leases
WHERE lease_id LIKE $1 AND state IN ('creating', 'active', 'revoking') AND revoked_at IS NULL

-- finish_revocations --
-- One round trip for a whole batch of successful revocations.
UPDATE broker_leases SET state = 'revoked', revoked_at = now(), last_error = NULL
WHERE lease_id = ANY($1::text[]) AND state = 'revoking'

-- schedule_revocation_retry --
-- $2 seconds until the next attempt; $3 the error with every secret already removed.
UPDATE broker_leases SET due_at = now() + make_interval(secs => $2), last_error = $3
WHERE lease_id = $1 AND state = 'revoking'

-- schedule_revocation_recheck --
-- The user is gone, but the lease was claimed while still 'creating': a slow creator could
-- still make the user, so revoke once more after $2 seconds. revoked_at records the first
-- success; such rows do not count as pending for revoke-prefix.
UPDATE broker_leases SET due_at = now() + make_interval(secs => $2), last_error = NULL,
    revoked_at = now()
WHERE lease_id = $1 AND state = 'revoking'

-- force_revoked --
UPDATE broker_leases SET state = 'revoked', revoked_at = now(),
    last_error = coalesce(last_error || '; ', '') || 'removed by revoke-force'
WHERE lease_id LIKE $1 AND state IN ('creating', 'active', 'revoking')

-- list_lease_keys --
-- Vault's hierarchical listing: the next path segment under the prefix, with a trailing
-- slash where more segments follow. $1 LIKE pattern, $2 prefix length + 1.
SELECT DISTINCT
    CASE WHEN strpos(rest, '/') > 0 THEN split_part(rest, '/', 1) || '/' ELSE rest END AS key
FROM (
    SELECT substr(lease_id, $2) AS rest FROM broker_leases
    WHERE lease_id LIKE $1 AND state IN ('creating', 'active', 'revoking')
) AS live
ORDER BY key

-- release_claims --
-- Graceful shutdown: claims this node could not finish become due now for other nodes.
UPDATE broker_leases SET due_at = now()
WHERE lease_id = ANY($1::text[]) AND state = 'revoking'

-- count_failing_leases --
-- Vault calls leases whose revocation keeps failing "irrevocable"; ours are retried forever.
SELECT mount || '/creds/' || role_name || '/' AS prefix, count(*) AS n
FROM broker_leases
WHERE state = 'revoking' AND last_error IS NOT NULL
GROUP BY 1 ORDER BY 1

-- list_failing_leases --
SELECT lease_id, expires_at, attempts, last_error, due_at
FROM broker_leases
WHERE state = 'revoking' AND last_error IS NOT NULL
ORDER BY lease_id
LIMIT $1

-- live_usernames --
-- Of the names given, those with a lease that is not finished (creating counts: its user
-- may be appearing right now). Across all connections: two may point at one server.
SELECT DISTINCT username FROM broker_leases
WHERE username = ANY($1::text[])
  AND (state IN ('creating', 'active') OR (state = 'revoking' AND revoked_at IS NULL))

-- heartbeat --
INSERT INTO broker_nodes (node_id, api_address, version) VALUES ($1, $2, $3)
ON CONFLICT (node_id) DO UPDATE SET last_heartbeat = now(), api_address = EXCLUDED.api_address

-- remove_node --
DELETE FROM broker_nodes WHERE node_id = $1

-- live_nodes --
SELECT node_id, api_address, version, started_at, last_heartbeat
FROM broker_nodes
WHERE last_heartbeat > now() - make_interval(secs => $1)
ORDER BY started_at, node_id

-- list_all_connections --
SELECT mount, name, plugin_name, connection_url, username, password, allowed_roles,
       username_template, verify_connection, options, version
FROM broker_connections ORDER BY mount, name

-- lease_counts --
-- Live leases by state, mount and role, for the metrics gauges (through the partial index).
SELECT state, mount, role_name, count(*) AS n FROM broker_leases
WHERE state IN ('creating', 'active', 'revoking')
GROUP BY state, mount, role_name

-- sweep_backlog --
SELECT count(*) FROM broker_leases
WHERE state IN ('creating', 'active', 'revoking') AND due_at <= now()

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

-- lock_connection_for_delete --
-- Held until the deleting transaction ends: an issuance that checks the connection
-- (connections_still_exist) waits for it, then sees the outcome; the lease count that
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

-- connections_still_exist --
-- Issuance, after its lease row is committed and before the user is made: which of the
-- (mount, name) pairs still exist. FOR KEY SHARE waits for a delete that holds the row
-- (lock_connection_for_delete) and then sees its outcome, so a connection is never deleted
-- between this check and the user's creation with a lease it did not count. Returns the
-- 1-based positions of the pairs that exist (group commit: many at once).
SELECT k.i FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(mount, name, i)
WHERE EXISTS (
    SELECT 1 FROM broker_connections c
    WHERE c.mount = k.mount AND c.name = k.name
    FOR KEY SHARE
)

-- upsert_role --
INSERT INTO broker_roles
    (mount, name, db_name, creation_statements, revocation_statements, rollback_statements,
     renew_statements, default_ttl, max_ttl, orphan_leases, max_leases)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
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
    updated_at = now()

-- get_role --
SELECT mount, name, db_name, creation_statements, revocation_statements, rollback_statements,
       renew_statements, default_ttl, max_ttl, orphan_leases, max_leases
FROM broker_roles WHERE mount = $1 AND name = $2

-- list_roles --
SELECT name FROM broker_roles WHERE mount = $1 ORDER BY name

-- get_issue_context --
-- The role and its connection in one round trip (the issuance hot path).
SELECT r.mount, r.name, r.db_name, r.creation_statements, r.revocation_statements,
       r.rollback_statements, r.renew_statements, r.default_ttl, r.max_ttl,
       r.orphan_leases, r.max_leases,
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
     revocation_statements, renew_statements, issued_at, expires_at, max_expires_at, due_at,
     token_accessor)
SELECT l.lease_id, l.mount, l.role_name, l.connection_name, l.plugin_name, l.username,
       ARRAY(SELECT jsonb_array_elements_text(l.revocation::jsonb)),
       ARRAY(SELECT jsonb_array_elements_text(l.renew::jsonb)),
       l.issued_at, l.expires_at, l.max_expires_at, l.due_at, l.token_accessor
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[],
            $12::timestamptz[], $13::text[])
    AS l(lease_id, mount, role_name, connection_name, plugin_name, username, revocation, renew,
         issued_at, expires_at, max_expires_at, due_at, token_accessor)

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
       max_expires_at, state, due_at, attempts, last_error, revoked_at, token_accessor
FROM broker_leases WHERE lease_id = $1

-- renew_lease --
UPDATE broker_leases SET expires_at = $2, due_at = $2, last_renewed_at = now()
WHERE lease_id = $1 AND state = 'active'
RETURNING lease_id

-- claim_due_leases --
-- $1 batch size, $2 seconds the claim hides the row from other sweeps (the last resort for
-- a claimer that is alive but stuck), $3 LIKE pattern on lease_id ('%' for all), $4 the
-- claiming process's instance id: a dead claimer's rows are handed back at once by
-- release_dead_claims. A claim handed back unfinished (released or taken from a dead
-- node: 'revoking', claimed before, no holder) may have been made while the lease was
-- still 'creating', and its holder never scheduled the re-check: it counts as 'creating'
-- again, which only matters while a creator could still be at work (_needs_recheck).
WITH due AS (
    SELECT lease_id, state, claimed_by, attempts FROM broker_leases
    WHERE state IN ('creating', 'active', 'revoking') AND due_at <= now() AND lease_id LIKE $3
    ORDER BY due_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE broker_leases AS l
SET state = 'revoking', due_at = now() + make_interval(secs => $2), attempts = l.attempts + 1,
    claimed_by = $4
FROM due
WHERE l.lease_id = due.lease_id
RETURNING l.lease_id, l.mount, l.role_name, l.connection_name, l.plugin_name, l.username,
          l.revocation_statements, l.issued_at, l.expires_at, l.attempts,
          CASE WHEN due.state = 'revoking' AND due.claimed_by IS NULL AND due.attempts > 0
               THEN 'creating' ELSE due.state END AS prior_state

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
-- slash where more segments follow. $1 LIKE pattern of a prefix ending in '/', $2 its
-- length + 1. The leases Vault still knows: a revoked user awaiting its re-check
-- (revoked_at set) is gone for lookup and for revoke-prefix, so it is not listed either.
SELECT DISTINCT
    CASE WHEN strpos(rest, '/') > 0 THEN split_part(rest, '/', 1) || '/' ELSE rest END AS key
FROM (
    SELECT substr(lease_id, $2) AS rest FROM broker_leases
    WHERE lease_id LIKE $1 AND state IN ('creating', 'active', 'revoking')
      AND revoked_at IS NULL
) AS live
ORDER BY key

-- release_claims --
-- Graceful shutdown: claims this node could not finish become due now for other nodes.
UPDATE broker_leases SET due_at = now(), claimed_by = NULL
WHERE lease_id = ANY($1::text[]) AND state = 'revoking'

-- release_dead_claims --
-- Run with every heartbeat: claims held by dead broker processes become due now, so the
-- next sweep of a live node takes them over instead of waiting out the claim timeout.
-- Dead: an instance whose node has not heartbeaten for $3 seconds, or an earlier instance
-- of this node id $1 (a restart; $2 is this instance). A node that is merely slow to
-- heartbeat loses its claims early at worst: revoking twice is harmless. The dead ids (a
-- few node rows) go in as an array, so the plan probes broker_leases_claimed_by_idx for
-- them rather than walking every claim (failing revocations keep theirs).
UPDATE broker_leases SET due_at = now(), claimed_by = NULL
WHERE state = 'revoking' AND claimed_by = ANY(ARRAY(
    SELECT instance_id FROM broker_nodes
    WHERE instance_id <> $2
      AND (node_id = $1 OR last_heartbeat < now() - make_interval(secs => $3))
))

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
-- $4 this process's instance id: a node restarted under the same id is a new instance,
-- started now (its predecessor's claims are dead, see release_dead_claims).
INSERT INTO broker_nodes (node_id, api_address, version, instance_id) VALUES ($1, $2, $3, $4)
ON CONFLICT (node_id) DO UPDATE SET last_heartbeat = now(), api_address = EXCLUDED.api_address,
    version = EXCLUDED.version, instance_id = EXCLUDED.instance_id,
    started_at = CASE WHEN broker_nodes.instance_id IS DISTINCT FROM EXCLUDED.instance_id
                      THEN now() ELSE broker_nodes.started_at END

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

-- count_live_leases_of_role --
-- Lease quotas (max_leases): through broker_leases_role_live_idx.
SELECT count(*) FROM broker_leases
WHERE mount = $1 AND role_name = $2 AND state IN ('creating', 'active', 'revoking')

-- update_connection_password --
-- The re-encrypt job: compare-and-set, so a concurrent write of a new password wins.
UPDATE broker_connections SET password = $4
WHERE mount = $1 AND name = $2 AND password = $3

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

-- insert_token --
INSERT INTO broker_tokens
    (accessor, token_hmac, parent_accessor, policies, display_name, meta, num_uses, uses_left,
     ttl, explicit_max_ttl, renewable, path, bound_cidrs, expires_at, max_expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10, $11, $12, $13, $14)

-- get_token_by_hmac --
SELECT accessor, parent_accessor, policies, display_name, meta, num_uses, uses_left, ttl,
       explicit_max_ttl, renewable, path, bound_cidrs, created_at, expires_at, max_expires_at
FROM broker_tokens WHERE token_hmac = $1

-- get_token_by_accessor --
SELECT accessor, parent_accessor, policies, display_name, meta, num_uses, uses_left, ttl,
       explicit_max_ttl, renewable, path, bound_cidrs, created_at, expires_at, max_expires_at
FROM broker_tokens WHERE accessor = $1

-- use_token --
-- A limited-use token spends one use per request; returns the uses left (none: spent).
UPDATE broker_tokens SET uses_left = uses_left - 1
WHERE accessor = $1 AND uses_left > 0
RETURNING uses_left

-- renew_token --
UPDATE broker_tokens SET expires_at = $2, ttl = $3
WHERE accessor = $1
RETURNING expires_at

-- revoke_token_trees --
-- Tokens and every descendant go (the foreign key cascades to children created meanwhile),
-- and in the same statement their leases become due, for the sweep to revoke.
WITH RECURSIVE tree AS (
    SELECT accessor FROM broker_tokens WHERE accessor = ANY($1::text[])
    UNION
    SELECT t.accessor FROM broker_tokens t JOIN tree ON t.parent_accessor = tree.accessor
),
gone AS (
    DELETE FROM broker_tokens WHERE accessor IN (SELECT accessor FROM tree) RETURNING accessor
),
due AS (
    UPDATE broker_leases SET due_at = now()
    WHERE token_accessor IN (SELECT accessor FROM gone) AND state IN ('creating', 'active')
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS tokens, (SELECT count(*) FROM due) AS leases

-- orphan_children --
UPDATE broker_tokens SET parent_accessor = NULL WHERE parent_accessor = $1

-- revoke_leases_of_missing_tokens --
-- Safety net for a lease whose token went while the lease was being issued (or across a
-- crash): a live lease tied to a token that no longer exists becomes due.
UPDATE broker_leases l SET due_at = now()
WHERE l.token_accessor IS NOT NULL AND l.state IN ('creating', 'active') AND l.due_at > now()
  AND NOT EXISTS (SELECT 1 FROM broker_tokens t WHERE t.accessor = l.token_accessor)

-- expired_tokens --
SELECT accessor FROM broker_tokens
WHERE expires_at IS NOT NULL AND expires_at <= now()
ORDER BY expires_at
LIMIT $1

-- list_token_accessors --
SELECT accessor FROM broker_tokens ORDER BY created_at, accessor

-- upsert_policy --
INSERT INTO broker_policies (name, policy) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET policy = EXCLUDED.policy, updated_at = now()

-- get_policy --
SELECT policy FROM broker_policies WHERE name = $1

-- list_policies --
SELECT name FROM broker_policies ORDER BY name

-- delete_policy --
DELETE FROM broker_policies WHERE name = $1

-- notify_auth_changed --
-- Policies or tokens changed: other nodes drop their cached copies.
SELECT pg_notify('broker_auth', $1)

-- insert_auth_method --
INSERT INTO broker_auth_methods (path, type, description, accessor) VALUES ($1, $2, $3, $4)
ON CONFLICT (path) DO NOTHING
RETURNING path

-- list_auth_methods --
SELECT path, type, description, accessor, created_at FROM broker_auth_methods ORDER BY path

-- delete_auth_method --
DELETE FROM broker_auth_methods WHERE path = $1 RETURNING path

-- upsert_approle_role --
INSERT INTO broker_approle_roles
    (mount, name, role_id, bind_secret_id, token_policies, token_ttl, token_max_ttl,
     token_num_uses, token_bound_cidrs, secret_id_ttl, secret_id_num_uses, secret_id_bound_cidrs)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (mount, name) DO UPDATE SET
    role_id = EXCLUDED.role_id,
    bind_secret_id = EXCLUDED.bind_secret_id,
    token_policies = EXCLUDED.token_policies,
    token_ttl = EXCLUDED.token_ttl,
    token_max_ttl = EXCLUDED.token_max_ttl,
    token_num_uses = EXCLUDED.token_num_uses,
    token_bound_cidrs = EXCLUDED.token_bound_cidrs,
    secret_id_ttl = EXCLUDED.secret_id_ttl,
    secret_id_num_uses = EXCLUDED.secret_id_num_uses,
    secret_id_bound_cidrs = EXCLUDED.secret_id_bound_cidrs

-- get_approle_role --
-- By name ($2) or, for a login, by role ID ($3); the other is NULL.
SELECT mount, name, role_id, bind_secret_id, token_policies, token_ttl, token_max_ttl,
       token_num_uses, token_bound_cidrs, secret_id_ttl, secret_id_num_uses,
       secret_id_bound_cidrs
FROM broker_approle_roles WHERE mount = $1 AND (name = $2 OR role_id = $3)

-- list_approle_roles --
SELECT name FROM broker_approle_roles WHERE mount = $1 ORDER BY name

-- delete_approle_role --
DELETE FROM broker_approle_roles WHERE mount = $1 AND name = $2 RETURNING name

-- insert_secret_id --
INSERT INTO broker_approle_secret_ids
    (secret_id_hmac, accessor, mount, role_name, num_uses, uses_left, cidr_list, metadata,
     expires_at)
VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8)
RETURNING created_at

-- consume_secret_id --
-- Login: one use is spent atomically, so two logins cannot share the last use. Expired or
-- spent secret IDs return nothing (a spent one is deleted by the caller's next query).
UPDATE broker_approle_secret_ids
SET uses_left = CASE WHEN num_uses > 0 THEN uses_left - 1 ELSE uses_left END
WHERE secret_id_hmac = $1 AND mount = $2 AND role_name = $3
  AND (num_uses = 0 OR uses_left > 0)
  AND (expires_at IS NULL OR expires_at > now())
RETURNING accessor, num_uses, uses_left, cidr_list

-- delete_spent_secret_ids --
DELETE FROM broker_approle_secret_ids
WHERE (num_uses > 0 AND uses_left <= 0) OR (expires_at IS NOT NULL AND expires_at <= now())

-- get_secret_id --
SELECT accessor, role_name, num_uses, uses_left, cidr_list, metadata, created_at, expires_at
FROM broker_approle_secret_ids
WHERE mount = $1 AND role_name = $2 AND (secret_id_hmac = $3 OR accessor = $4)

-- list_secret_id_accessors --
SELECT accessor FROM broker_approle_secret_ids
WHERE mount = $1 AND role_name = $2 ORDER BY accessor

-- delete_secret_id --
DELETE FROM broker_approle_secret_ids
WHERE mount = $1 AND role_name = $2 AND (secret_id_hmac = $3 OR accessor = $4)
RETURNING accessor

-- upsert_audit_device --
INSERT INTO broker_audit_devices (path, type, description, options) VALUES ($1, $2, $3, $4)
ON CONFLICT (path) DO NOTHING
RETURNING path

-- list_audit_devices --
SELECT path, type, description, options FROM broker_audit_devices ORDER BY path

-- delete_audit_device --
DELETE FROM broker_audit_devices WHERE path = $1 RETURNING path

-- insert_audit_entries --
INSERT INTO broker_audit_log (device, node_id, entry)
SELECT $1, $2, e FROM unnest($3::text[]) WITH ORDINALITY AS x(e, n) ORDER BY n

-- last_audit_entry --
SELECT entry FROM broker_audit_log WHERE device = $1 AND node_id = $2
ORDER BY id DESC LIMIT 1

-- audit_entries --
SELECT node_id, entry FROM broker_audit_log WHERE device = $1 ORDER BY node_id, id

-- upsert_password_policy --
INSERT INTO broker_password_policies (name, policy) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET policy = EXCLUDED.policy, updated_at = now()

-- get_password_policy --
SELECT policy FROM broker_password_policies WHERE name = $1

-- list_password_policies --
SELECT name FROM broker_password_policies ORDER BY name

-- delete_password_policy --
DELETE FROM broker_password_policies WHERE name = $1

-- tidy_leases --
-- One batch of finished leases past the retention; live rows are never candidates.
DELETE FROM broker_leases WHERE lease_id IN (
    SELECT lease_id FROM broker_leases
    WHERE state IN ('revoked', 'failed')
      AND coalesce(revoked_at, expires_at) < now() - make_interval(secs => $1)
    LIMIT $2
)

-- tidy_wrapped_responses --
DELETE FROM broker_wrapped_responses WHERE expires_at <= now()

-- insert_wrapped_response --
INSERT INTO broker_wrapped_responses
    (token_hmac, accessor, response, creation_path, ttl, expires_at)
VALUES ($1, $2, $3, $4, $5::integer, now() + make_interval(secs => $5::integer))
RETURNING created_at

-- take_wrapped_response --
-- Unwrapping is single use: the row goes in the statement that reads it.
DELETE FROM broker_wrapped_responses WHERE token_hmac = $1 AND expires_at > now()
RETURNING accessor, response, creation_path, ttl, created_at

-- get_wrapped_response --
SELECT accessor, creation_path, ttl, created_at FROM broker_wrapped_responses
WHERE token_hmac = $1 AND expires_at > now()

-- set_connection_pending_password --
UPDATE broker_connections SET pending_password = $3 WHERE mount = $1 AND name = $2

-- commit_connection_password --
-- rotate-root confirmed: the pending password becomes the password; the version bump makes
-- every node rebuild its pool with it.
-- $3: the new password, sealed under the connection's own context.
UPDATE broker_connections
SET password = $3, pending_password = NULL, version = version + 1, updated_at = now()
WHERE mount = $1 AND name = $2 AND pending_password IS NOT NULL

-- connections_with_pending_password --
SELECT mount, name FROM broker_connections WHERE pending_password IS NOT NULL

-- get_connection_pending_password --
SELECT pending_password FROM broker_connections WHERE mount = $1 AND name = $2

-- upsert_static_role --
INSERT INTO broker_static_roles
    (mount, name, db_name, username, rotation_period, rotation_schedule, rotation_window,
     rotation_statements, next_rotation)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (mount, name) DO UPDATE SET
    db_name = EXCLUDED.db_name,
    username = EXCLUDED.username,
    rotation_period = EXCLUDED.rotation_period,
    rotation_schedule = EXCLUDED.rotation_schedule,
    rotation_window = EXCLUDED.rotation_window,
    rotation_statements = EXCLUDED.rotation_statements,
    next_rotation = EXCLUDED.next_rotation

-- get_static_role --
SELECT mount, name, db_name, username, rotation_period, rotation_schedule, rotation_window,
       rotation_statements, password, pending_password, last_rotation, next_rotation,
       attempts, last_error
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

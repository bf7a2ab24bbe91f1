-- Lease rows (storage/leases.py): issuance, renewal, the revocation claim path, tidy.
-- Named blocks (loaded by storage/sql/__init__.py), run only by the module named above.

-- insert_leases --
-- $12: when the sweep takes over if creation never finishes (a crashed creator): the
-- sooner of the expiry and the creation timeout. $14: each row's MAC (storage/integrity.py).
-- Many leases in one statement (group commit); the arrays are parallel columns, and each
-- lease's statement lists travel as a JSON array (lists of different lengths).
-- A lease is written only while its connection exists: FOR KEY SHARE waits out a delete
-- that holds the connection (lock_connection_for_delete) and then sees its outcome, and a
-- delete that comes later counts this row. So no user is ever made through a connection
-- deleted with a lease it did not count. Returns the ids written.
INSERT INTO broker_leases
    (lease_id, mount, role_name, connection_name, plugin_name, username,
     revocation_statements, renew_statements, issued_at, expires_at, max_expires_at, due_at,
     token_accessor, mac)
SELECT l.lease_id, l.mount, l.role_name, l.connection_name, l.plugin_name, l.username,
       ARRAY(SELECT jsonb_array_elements_text(l.revocation::jsonb)),
       ARRAY(SELECT jsonb_array_elements_text(l.renew::jsonb)),
       l.issued_at, l.expires_at, l.max_expires_at, l.due_at, l.token_accessor, l.mac
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[],
            $12::timestamptz[], $13::text[], $14::bytea[])
    AS l(lease_id, mount, role_name, connection_name, plugin_name, username, revocation, renew,
         issued_at, expires_at, max_expires_at, due_at, token_accessor, mac)
WHERE EXISTS (
    SELECT 1 FROM broker_connections c
    WHERE c.mount = l.mount AND c.name = l.connection_name
    FOR KEY SHARE
)
RETURNING lease_id

-- activate_leases --
-- Only a lease still 'creating' becomes active: if a revocation claimed it meanwhile, the
-- creator sees no row and must remove the user it just made. Group commit: many at once.
UPDATE broker_leases SET state = 'active', due_at = expires_at
WHERE lease_id = ANY($1::text[]) AND state = 'creating'
RETURNING lease_id

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
       max_expires_at, state, due_at, attempts, last_error, revoked_at, token_accessor, mac
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
-- Everything the row's MAC covers comes back with it: it is checked before any engine runs.
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
          l.renew_statements, l.max_expires_at, l.token_accessor, l.mac,
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

-- tidy_leases --
-- One batch of finished leases past the retention; live rows are never candidates.
DELETE FROM broker_leases WHERE lease_id IN (
    SELECT lease_id FROM broker_leases
    WHERE state IN ('revoked', 'failed')
      AND coalesce(revoked_at, expires_at) < now() - make_interval(secs => $1)
    LIMIT $2
)

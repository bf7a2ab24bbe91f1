-- Who may call the broker (storage/auth.py): tokens, ACL policies, auth methods, AppRole,
-- wrapped responses.
-- Named blocks (loaded by storage/sql/__init__.py), run only by the module named above.

-- insert_token --
INSERT INTO broker_tokens
    (accessor, token_hmac, parent_accessor, policies, display_name, meta, num_uses, uses_left,
     ttl, explicit_max_ttl, renewable, path, bound_cidrs, expires_at, max_expires_at, mac,
     period)
VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)

-- get_token_by_hmac --
SELECT accessor, parent_accessor, policies, display_name, meta, num_uses, uses_left, ttl,
       explicit_max_ttl, renewable, path, bound_cidrs, created_at, expires_at, max_expires_at,
       period, token_hmac, mac
FROM broker_tokens WHERE token_hmac = $1

-- get_token_by_accessor --
SELECT accessor, parent_accessor, policies, display_name, meta, num_uses, uses_left, ttl,
       explicit_max_ttl, renewable, path, bound_cidrs, created_at, expires_at, max_expires_at,
       period, token_hmac, mac
FROM broker_tokens WHERE accessor = $1

-- use_token --
-- A limited-use token spends one use per request; returns the uses left (none: spent).
UPDATE broker_tokens SET uses_left = uses_left - 1
WHERE accessor = $1 AND uses_left > 0
RETURNING uses_left

-- renew_token --
-- $4: the row's MAC over the new expiry, computed from the row as read with MAC $5
-- (compare-and-set: a concurrent change wins and the caller reads again).
UPDATE broker_tokens SET expires_at = $2, ttl = $3, mac = $4
WHERE accessor = $1 AND mac IS NOT DISTINCT FROM $5
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

-- login_token_accessors --
-- The tokens an auth method's logins issued (their path is the method's login path).
SELECT accessor FROM broker_tokens WHERE path = $1

-- children_of_token --
-- Orphaning: the children as stored, re-authenticated without their parent.
SELECT accessor, parent_accessor, policies, display_name, meta, num_uses, uses_left, ttl,
       explicit_max_ttl, renewable, path, bound_cidrs, created_at, expires_at, max_expires_at,
       period, token_hmac, mac
FROM broker_tokens WHERE parent_accessor = $1

-- orphan_children --
-- $2 the children's accessors, $3 their MACs without a parent, $4 their MACs as read
-- (a child changed meanwhile keeps its parent, and dies with it).
UPDATE broker_tokens t SET parent_accessor = NULL, mac = k.mac
FROM unnest($2::text[], $3::bytea[], $4::bytea[]) AS k(accessor, mac, old_mac)
WHERE t.accessor = k.accessor AND t.parent_accessor = $1
  AND t.mac IS NOT DISTINCT FROM k.old_mac

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
INSERT INTO broker_policies (name, policy, mac) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET policy = EXCLUDED.policy, mac = EXCLUDED.mac, updated_at = now()

-- get_policy --
SELECT name, policy, mac FROM broker_policies WHERE name = $1

-- list_policies --
SELECT name FROM broker_policies ORDER BY name

-- delete_policy --
DELETE FROM broker_policies WHERE name = $1

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
     token_num_uses, token_bound_cidrs, secret_id_ttl, secret_id_num_uses, secret_id_bound_cidrs,
     mac, token_period)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
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
    secret_id_bound_cidrs = EXCLUDED.secret_id_bound_cidrs,
    token_period = EXCLUDED.token_period,
    mac = EXCLUDED.mac

-- get_approle_role --
-- By name ($2) or, for a login, by role ID ($3); the other is NULL.
SELECT mount, name, role_id, bind_secret_id, token_policies, token_ttl, token_max_ttl,
       token_num_uses, token_bound_cidrs, secret_id_ttl, secret_id_num_uses,
       secret_id_bound_cidrs, token_period, mac
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

-- tidy_wrapped_responses --
DELETE FROM broker_wrapped_responses WHERE expires_at <= now()

-- upsert_auth_entry --
INSERT INTO broker_auth_entries (mount, kind, name, body) VALUES ($1, $2, $3, $4)
ON CONFLICT (mount, kind, name) DO UPDATE SET body = EXCLUDED.body, updated_at = now()

-- get_auth_entry --
SELECT body FROM broker_auth_entries WHERE mount = $1 AND kind = $2 AND name = $3

-- list_auth_entries --
SELECT name FROM broker_auth_entries WHERE mount = $1 AND kind = $2 ORDER BY name

-- delete_auth_entry --
DELETE FROM broker_auth_entries WHERE mount = $1 AND kind = $2 AND name = $3 RETURNING name

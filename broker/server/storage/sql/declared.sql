-- The declarative configuration's record of what it applied (storage/declared.py).
-- Named blocks (loaded by storage/sql/__init__.py), run only by the module named above.

-- declared_lock --
-- Session-level advisory lock held for one whole apply, on a connection of its own: nodes
-- starting together (and `broker apply`) apply one after the other, and the later ones find
-- nothing left to do. Session-level, not transaction-level: an apply makes many writes on
-- other connections and may take seconds (connections are verified against their targets),
-- and holding a transaction open that long would hold back vacuum for nothing.
SELECT pg_advisory_lock(hashtext('broker.declarative'))

-- declared_unlock --
SELECT pg_advisory_unlock(hashtext('broker.declarative'))

-- list_declared --
SELECT kind, path, applied, secret_hmac FROM broker_declared ORDER BY kind, path

-- record_declared --
INSERT INTO broker_declared (kind, path, applied, secret_hmac) VALUES ($1, $2, $3, $4)
ON CONFLICT (kind, path) DO UPDATE
SET applied = EXCLUDED.applied, secret_hmac = EXCLUDED.secret_hmac, applied_at = now()

-- forget_declared --
DELETE FROM broker_declared WHERE kind = $1 AND path = $2

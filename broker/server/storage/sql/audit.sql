-- Audit devices, the table device's keyed-chain log and the chains' checkpoints
-- (storage/audit.py).
-- Named blocks (loaded by storage/sql/__init__.py), run only by the module named above.

-- upsert_audit_device --
INSERT INTO broker_audit_devices (path, type, description, options, mac)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (path) DO NOTHING
RETURNING path

-- list_audit_devices --
SELECT path, type, description, options, mac FROM broker_audit_devices ORDER BY path

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

-- insert_audit_checkpoint --
INSERT INTO broker_audit_checkpoints (chain, seq, device, node_id, target, mac)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (chain, seq) DO NOTHING

-- audit_checkpoints_of_chains --
SELECT chain, seq, mac, created_at::text AS created_at FROM broker_audit_checkpoints
WHERE chain = ANY($1::text[]) ORDER BY chain, seq

-- audit_checkpoints_of_target --
SELECT chain, seq, mac, created_at::text AS created_at FROM broker_audit_checkpoints
WHERE target = $1 ORDER BY chain, seq

-- latest_audit_checkpoint --
SELECT chain, seq, mac, created_at::text AS created_at FROM broker_audit_checkpoints
WHERE target = $1 AND node_id = $2 ORDER BY created_at DESC, seq DESC LIMIT 1

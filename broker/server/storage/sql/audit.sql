-- Audit devices and the table device's hash-chained log (storage/audit.py).
-- Named blocks (loaded by storage/sql/__init__.py), run only by the module named above.

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

-- Authenticated rows: every security-relevant row carries an HMAC-SHA256 (storage/integrity.py)
-- under the keyring's row key, over its table, its primary key and the columns that matter,
-- so someone who can write to this database cannot edit a row, move it to another key or
-- copy one from another install without the broker noticing. NULL until the first unseal
-- after this migration authenticates the rows written before it (trusted once).
ALTER TABLE broker_connections ADD COLUMN mac bytea;
ALTER TABLE broker_roles ADD COLUMN mac bytea;
ALTER TABLE broker_static_roles ADD COLUMN mac bytea;
ALTER TABLE broker_password_policies ADD COLUMN mac bytea;
ALTER TABLE broker_policies ADD COLUMN mac bytea;
ALTER TABLE broker_tokens ADD COLUMN mac bytea;
ALTER TABLE broker_approle_roles ADD COLUMN mac bytea;
ALTER TABLE broker_audit_devices ADD COLUMN mac bytea;

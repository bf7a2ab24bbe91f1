-- Authenticated lease rows: a lease carries the statements the broker runs as the target's
-- admin at revocation and renewal, and the user, connection and engine it runs them for, all
-- fixed at issuance. Its MAC (storage/integrity.py LEASES, under the keyring's row key)
-- covers them, so someone who can write to this database cannot make the broker run their
-- SQL. NULL for leases written before it: the row-authentication upgrade at unseal
-- authenticates the live ones (trusted once, like the other tables in 0006_row_macs).
ALTER TABLE broker_leases ADD COLUMN mac bytea;

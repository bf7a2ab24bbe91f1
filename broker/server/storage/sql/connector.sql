-- What the connector itself runs (storage/connector.py): the liveness probe and NOTIFY.
-- Named blocks (loaded by storage/sql/__init__.py), run only by the module named above.

-- ping --
SELECT 1

-- notify --
-- The one NOTIFY: the channel names are the constants in storage/connector.py.
SELECT pg_notify($1, $2)

-- writable --
-- Whether this server takes writes: a primary (not in recovery) whose transactions are not
-- read-only by default. sys/health answers 503 otherwise.
SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'

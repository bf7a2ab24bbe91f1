-- Vault's periodic tokens: a token's period (seconds; 0 = not periodic) and the period an
-- AppRole role gives the tokens its logins get. Every renewal of a periodic token sets its
-- TTL back to the period, with no maximum but explicit_max_ttl. Both columns are covered by
-- their row's MAC (storage/integrity.py, ``RowSpec.added``) only when not 0, so the rows
-- written before this migration (0 here) keep the MACs they have.
ALTER TABLE broker_tokens ADD COLUMN period integer NOT NULL DEFAULT 0 CHECK (period >= 0);
ALTER TABLE broker_approle_roles
    ADD COLUMN token_period integer NOT NULL DEFAULT 0 CHECK (token_period >= 0);

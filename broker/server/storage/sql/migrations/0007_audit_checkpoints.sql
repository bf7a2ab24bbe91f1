-- Checkpoints of the keyed audit chains (security/audit_chain.py): every so many entries,
-- every so many seconds and at shutdown, a device records how far its chain had got and the
-- MAC of that entry, so a log cut short (or emptied, or replaced) fails verification even
-- though every line left in it chains. Kept apart from the log itself: a file device's log
-- lives on the node's host, these rows in storage.
CREATE TABLE broker_audit_checkpoints (
    chain      text NOT NULL,     -- the chain's random id, as its entries carry it
    seq        bigint NOT NULL,   -- entries in the chain so far (the last one's seq)
    device     text NOT NULL,     -- the audit device's path
    node_id    text NOT NULL,     -- the node that wrote the chain
    target     text NOT NULL,     -- the file's real path, 'stdout', or 'table:<device>'
    mac        text NOT NULL,     -- hmac-sha256:v<term>:<hex> of the entry at seq
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain, seq)
);
-- The newest checkpoint a node recorded for a file (or a table device).
CREATE INDEX broker_audit_checkpoints_target_idx
    ON broker_audit_checkpoints (target, node_id, created_at);

-- Broker nodes sharing this storage database: each heartbeats here, so any node can say
-- which are live (sys/ha-status). Rows of stopped nodes are removed on graceful shutdown
-- and ignored once their heartbeat is stale.
CREATE TABLE broker_nodes (
    node_id        text PRIMARY KEY,
    api_address    text NOT NULL,
    version        text NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now()
);

-- Failing revocations are looked up by operators (sys/leases/count?type=irrevocable).
CREATE INDEX broker_leases_failing_idx ON broker_leases (lease_id)
    WHERE state = 'revoking' AND last_error IS NOT NULL;

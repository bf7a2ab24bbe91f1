-- The nodes sharing this storage (storage/nodes.py): heartbeats, and the claims of dead ones.
-- Named blocks (loaded by storage/sql/__init__.py), run only by the module named above.

-- heartbeat --
-- $4 this process's instance id: a node restarted under the same id is a new instance,
-- started now (its predecessor's claims are dead, see release_dead_claims).
INSERT INTO broker_nodes (node_id, api_address, version, instance_id) VALUES ($1, $2, $3, $4)
ON CONFLICT (node_id) DO UPDATE SET last_heartbeat = now(), api_address = EXCLUDED.api_address,
    version = EXCLUDED.version, instance_id = EXCLUDED.instance_id,
    started_at = CASE WHEN broker_nodes.instance_id IS DISTINCT FROM EXCLUDED.instance_id
                      THEN now() ELSE broker_nodes.started_at END

-- remove_node --
DELETE FROM broker_nodes WHERE node_id = $1

-- live_nodes --
SELECT node_id, api_address, version, started_at, last_heartbeat
FROM broker_nodes
WHERE last_heartbeat > now() - make_interval(secs => $1)
ORDER BY started_at, node_id

-- release_dead_claims --
-- Run with every heartbeat: claims held by dead broker processes become due now, so the
-- next sweep of a live node takes them over instead of waiting out the claim timeout.
-- Dead: an instance whose node has not heartbeaten for $3 seconds, or an earlier instance
-- of this node id $1 (a restart; $2 is this instance). A node that is merely slow to
-- heartbeat loses its claims early at worst: revoking twice is harmless. The dead ids (a
-- few node rows) go in as an array, so the plan probes broker_leases_claimed_by_idx for
-- them rather than walking every claim (failing revocations keep theirs).
UPDATE broker_leases SET due_at = now(), claimed_by = NULL
WHERE state = 'revoking' AND claimed_by = ANY(ARRAY(
    SELECT instance_id FROM broker_nodes
    WHERE instance_id <> $2
      AND (node_id = $1 OR last_heartbeat < now() - make_interval(secs => $3))
))

-- install_id --
-- This install's id (migration 0008): marked on every user the engines create.
SELECT install_id FROM broker_install

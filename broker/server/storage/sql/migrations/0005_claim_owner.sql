-- Who holds a revocation claim, so a node that dies mid-revocation does not hide its claimed
-- leases for the whole claim timeout: every heartbeat hands the claims of dead nodes (no
-- heartbeat for three intervals, or a node id restarted as a new process) back to the
-- queue. claimed_by is a process's instance id, not its node id: a node restarted under the
-- same id is a new instance and the old one's claims are dead.
ALTER TABLE broker_leases ADD COLUMN claimed_by text;
ALTER TABLE broker_nodes ADD COLUMN instance_id text;

-- The takeover looks up claims by dead instance ids: only rows being revoked, and only
-- while someone holds them (handed-back claims have claimed_by NULL).
CREATE INDEX broker_leases_claimed_by_idx ON broker_leases (claimed_by)
    WHERE state = 'revoking' AND claimed_by IS NOT NULL;

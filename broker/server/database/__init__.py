"""The database secrets engine: connections and roles (catalog), leases (issue, renew,
revoke, the sweep), static roles and rotation, reconciliation, templates, password
policies."""

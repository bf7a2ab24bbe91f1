"""broker: short-lived database logins behind Vault's HTTP API."""

__version__ = "0.1.0"

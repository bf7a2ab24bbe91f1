"""What protects the broker's secrets and its callers: the seal (root key), the barrier
(keyring, encryption at rest), audit devices, rate limits, redaction, response wrapping."""

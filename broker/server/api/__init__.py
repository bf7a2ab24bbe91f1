"""Vault's HTTP API on aiohttp: parse, authorize, call the domain, render."""

"""Server settings: a TOML file, overridden key by key by ``BROKER_*`` variables."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.durations import parse_duration

VAULT_DEFAULT_TTL = 768 * 3600  # Vault's system default and maximum lease TTL


@dataclass(frozen=True, slots=True)
class Settings:
    storage_dsn: str = field(default="", repr=False)  # may hold a password
    listen_address: str = "127.0.0.1:8200"
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: CA bundle client certificates are checked against; with ``tls_require_client_cert``
    #: a client without a valid certificate is refused during the handshake.
    tls_client_ca_file: str = ""
    tls_require_client_cert: bool = False
    #: How the root key reaches memory: shamir (operators unseal), file or env (auto-unseal
    #: key outside storage), dev (in-process; server --dev). See broker/seal.py.
    seal_type: str = "shamir"
    seal_key_file: str = ""
    #: With an auto-unseal: initialise uninitialised storage at start, handing out no
    #: unseal keys; bootstrap with root_token_sha256.
    auto_init: bool = False
    #: Requests per second allowed per client address and per token (0: no limit); a
    #: burst of ``rate_limit_burst`` (default: one second's worth) may come at once.
    rate_limit_per_address: float = 0.0
    rate_limit_per_token: float = 0.0
    rate_limit_burst: int = 0
    #: Vault's listener options for a broker behind a proxy or load balancer: the proxies'
    #: networks (CIDR; a TOML list, or comma-separated in the variable). A request from one
    #: of them is taken to come from the address its ``X-Forwarded-For`` names (the one the
    #: trusted proxy appended, less ``x_forwarded_for_hop_skips`` hops), for CIDR bindings,
    #: rate limits and audit. Empty (the default): the header is ignored, the peer is the
    #: client. With ``x_forwarded_for_reject_not_authorized`` (Vault's default), a request
    #: carrying the header from any other peer is refused with a 400, not served as if the
    #: header had been honoured or absent.
    x_forwarded_for_authorized_addrs: tuple[str, ...] = ()
    x_forwarded_for_hop_skips: int = 0
    x_forwarded_for_reject_not_authorized: bool = True
    #: Where connections may point: comma-separated host names and IP networks (CIDR), e.g.
    #: "10.0.0.0/8, db.internal". Empty: anywhere. Stops a policy holder who may write
    #: database/config from making the broker connect (and send credentials) elsewhere.
    allowed_target_hosts: str = ""
    #: Directories ``file`` audit devices may write in: absolute paths (a TOML list, or
    #: comma-separated in BROKER_AUDIT_FILE_DIRS). A device's file must resolve (symlinks
    #: and ``..`` followed) to a place inside one of them. Empty: a file device may only
    #: write to ``stdout``. Stops a token allowed to enable audit devices from appending
    #: text it chose to a shell profile or a crontab (Vault's CVE-2025-6000).
    audit_file_dirs: tuple[str, ...] = ()
    #: Whether ``PUT sys/audit/:path`` may enable devices (OpenBao's
    #: ``unsafe_allow_api_audit_creation``). On by default, for installs that enable their
    #: devices through the API (``audit_file_dirs`` confines file devices). Turn it off once
    #: the devices are enabled, or declare them in the ``[declarative]`` section, which
    #: creates them whatever this says.
    allow_api_audit_creation: bool = True
    #: The TOML file whose ``[declarative]`` section (mounts, connections, roles,
    #: policies, auth methods, audit devices: see server/bootstrap/) the server applies
    #: after every unseal, and ``broker apply`` on demand. Set by ``load`` to the
    #: configuration file itself when that has the section; BROKER_DECLARATIVE_FILE names
    #: another file (a ConfigMap key of its own, say).
    declarative_file: str = ""
    #: Revoked and failed lease rows are kept this long, then tidied away in batches.
    lease_retention: int = 7 * 24 * 3600
    tidy_interval: float = 600.0
    #: How often each node looks for static roles due for rotation.
    rotation_check_interval: float = 1.0
    #: Service tokens' TTL when none is asked for, and their ceiling.
    token_default_ttl: int = VAULT_DEFAULT_TTL
    token_max_ttl: int = VAULT_DEFAULT_TTL
    root_token: str = field(default="", repr=False)
    #: Hex SHA-256 of the root token, so the config file need not hold the token itself.
    root_token_sha256: str = ""
    sweep_interval: float = 1.0
    sweep_batch_size: int = 200
    revoke_concurrency: int = 16
    #: How long a claimed revocation stays hidden from other sweeps: the last resort for a
    #: claimer alive but stuck. A node that dies mid-revocation loses its claims sooner,
    #: once it misses three heartbeats (see nodes.py).
    claim_timeout: float = 60.0
    #: Upper bound on one user creation; a lease revoked while younger than this is
    #: revoked once more after it, in case a slow creator made the user afterwards.
    creation_timeout: float = 30.0
    #: Longest wait between two attempts at a failing revocation (it is never abandoned).
    revoke_backoff_max: float = 60.0
    #: This node's name in sys/health and sys/ha-status; default: host name and a random tag.
    node_id: str = ""
    #: The address other nodes and operators can reach this node at (sys/ha-status).
    api_address: str = ""
    #: Seconds between heartbeats. Three missed ones mark a node dead: sys/ha-status drops
    #: it and the others take over its revocation claims (so a killed node's claimed
    #: revocations wait seconds, not the claim timeout). One small upsert per interval.
    heartbeat_interval: float = 1.0
    #: Seconds between scheduled orphan reports (0: off). See ``broker reconcile``.
    reconcile_interval: float = 0.0
    #: The scheduled reconcile also drops the orphans it finds (``--revoke``): the safety
    #: net for storage on asynchronous replication, whose failover can lose lease rows
    #: whose users exist. Only users marked as this install's are ever dropped.
    reconcile_revoke: bool = False
    #: Grace for in-flight requests and claimed revocations on SIGTERM.
    shutdown_timeout: float = 20.0
    default_lease_ttl: int = VAULT_DEFAULT_TTL
    max_lease_ttl: int = VAULT_DEFAULT_TTL
    max_request_bytes: int = 1024 * 1024
    storage_pool_size: int = 10
    apply_migrations: bool = True
    log_level: str = "INFO"
    log_format: str = "text"

    def token_is_root(self, token: str) -> bool:
        if not token:
            return False
        if self.root_token and hmac.compare_digest(token.encode(), self.root_token.encode()):
            return True
        if self.root_token_sha256:
            digest = hashlib.sha256(token.encode()).hexdigest()
            return hmac.compare_digest(digest, self.root_token_sha256.lower())
        return False

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(
        cls, path: str | Path | None = None, environ: dict[str, str] | None = None
    ) -> Settings:
        """File values first, then every ``BROKER_<KEY>`` variable that is set."""
        environ = dict(os.environ) if environ is None else environ
        values: dict[str, Any] = {}
        if path is not None:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
            values.update(raw.get("broker", raw))
            # The declarative section is not settings: it is loaded and checked on its own
            # (bootstrap/config.py), from the file this names.
            values.pop("declarative", None)
            if "declarative" in raw and "declarative_file" not in values:
                values["declarative_file"] = os.path.abspath(path)
        for f in dataclasses.fields(cls):
            env_value = environ.get("BROKER_" + f.name.upper())
            if env_value is not None:
                values[f.name] = env_value
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        return cls(**{name: _coerce(cls, name, value) for name, value in values.items()})


def _coerce(cls: type[Settings], name: str, value: Any) -> Any:
    kind = next(f.type for f in dataclasses.fields(cls) if f.name == name)
    if name in (
        "default_lease_ttl",
        "max_lease_ttl",
        "token_default_ttl",
        "token_max_ttl",
        "lease_retention",
    ):
        return parse_duration(value, name)
    if name == "x_forwarded_for_authorized_addrs":
        return _networks(name, value)
    if kind == "tuple[str, ...]":
        return _directories(name, value)
    if kind == "bool":
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return str(value)


def _directories(name: str, value: Any) -> tuple[str, ...]:
    """A TOML list or a comma-separated string of absolute paths: a relative one would
    depend on the directory the server happens to start in."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    paths = tuple(str(item).strip() for item in items if str(item).strip())
    relative = [p for p in paths if not os.path.isabs(p)]
    if relative:
        raise ValueError(f"{name}: not absolute paths: {', '.join(relative)}")
    return paths


def _networks(name: str, value: Any) -> tuple[str, ...]:
    """A TOML list or a comma-separated string of CIDR blocks (or single addresses),
    checked at load: a typo must stop the server, not quietly trust nobody or everybody."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    blocks = tuple(str(item).strip() for item in items if str(item).strip())
    for block in blocks:
        try:
            ipaddress.ip_network(block, strict=False)
        except ValueError as exc:
            raise ValueError(f"{name}: invalid CIDR block {block!r}") from exc
    return blocks

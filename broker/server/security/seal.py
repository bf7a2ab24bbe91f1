"""Initialisation, sealing and unsealing: how the root key reaches this node's memory.

Three ways, as in Vault:

- ``shamir`` (the default): ``sys/init`` splits a fresh root key into shares for the
  operators; after every start the node is sealed until enough of them are given to
  ``sys/unseal``.
- ``file`` / ``env``: auto-unseal. The root key is also stored wrapped (AES-256-GCM) by a key
  kept outside the storage database, in a file or in ``BROKER_SEAL_KEY``; the node unseals
  itself at start. The trade-off: whoever holds that key and a copy of the storage database
  holds every secret. It buys unattended restarts, and with them revocation that never
  waits for a human (an expired MySQL login is only dropped by a running, unsealed broker).
- ``dev``: an auto-unseal key derived from the dev root token, for ``server --dev``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag

from broker.exceptions import BrokerError, InvalidRequest, NotInitialized
from broker.server.settings import Settings
from broker.server.storage.barrier import (
    KEY_BYTES,
    ROOT_KEY_AAD,
    Keyring,
    combine_shares,
    open_bytes,
    parse_unseal_key,
    seal_bytes,
    split_root_key,
)
from broker.server.storage.keyring import KeyringStore

log = logging.getLogger(__name__)
SEAL_TYPES = ("shamir", "file", "env", "dev")
SEAL_KEY_ENV = "BROKER_SEAL_KEY"
MAX_SHARES = 255


class SealConfigError(BrokerError):
    """The auto-unseal key is missing or unusable."""


@dataclass(frozen=True, slots=True)
class InitResult:
    keys: list[bytes] = field(repr=False)
    root_token: str = field(repr=False)

    def as_vault(self) -> dict[str, Any]:
        """Vault's ``sys/init`` answer; with an auto-unseal the shares are recovery keys."""
        return {
            "keys": [k.hex() for k in self.keys],
            "keys_base64": [base64.b64encode(k).decode() for k in self.keys],
            "root_token": self.root_token,
        }


def load_seal_key(settings: Settings, environ: Mapping[str, str]) -> bytes:
    """The auto-unseal key: 32 bytes as hex or base64, from the file or the environment."""
    if settings.seal_type == "file":
        if not settings.seal_key_file:
            raise SealConfigError("seal_type 'file' needs seal_key_file")
        try:
            with open(settings.seal_key_file) as fh:
                text = fh.read()
        except OSError as exc:
            raise SealConfigError(f"cannot read seal_key_file: {exc.strerror}") from exc
    elif settings.seal_type == "env":
        text = environ.get(SEAL_KEY_ENV, "")
        if not text:
            raise SealConfigError(f"seal_type 'env' needs {SEAL_KEY_ENV} in the environment")
    else:
        raise SealConfigError(f"seal_type {settings.seal_type!r} has no key to load")
    try:
        key = parse_unseal_key(text)
    except InvalidRequest as exc:
        raise SealConfigError("the seal key must be 32 bytes, hex or base64") from exc
    if len(key) != KEY_BYTES:
        raise SealConfigError("the seal key must be 32 bytes, hex or base64")
    return key


def _dev_key(settings: Settings) -> bytes:
    """Dev mode derives its key from the root token it prints: a dev server restarted on
    the same ``--dev-storage-dsn`` with the same ``--dev-root-token-id`` opens its storage
    again. Dev mode is not secure, and says so."""
    if not settings.root_token:
        return os.urandom(KEY_BYTES)
    return hashlib.sha256(b"broker dev seal\0" + settings.root_token.encode()).digest()


def generate_seal_key() -> str:
    """For ``broker operator generate-seal-key``: what a key file or BROKER_SEAL_KEY holds."""
    return secrets.token_hex(KEY_BYTES)


class SealManager:
    """This node's seal state, and the operations of ``sys/init``, ``sys/unseal`` and
    ``sys/seal``. ``create_root_token`` runs while the new keyring is open, at init."""

    def __init__(
        self,
        store: KeyringStore,
        settings: Settings,
        create_root_token: Callable[[], Awaitable[str]],
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if settings.seal_type not in SEAL_TYPES:
            raise SealConfigError(f"seal_type must be one of {', '.join(SEAL_TYPES)}")
        self._store = store
        self._settings = settings
        self._create_root_token = create_root_token
        self._environ = os.environ if environ is None else environ
        self._shares: list[bytes] = []
        self._nonce = ""
        self._dev_key = _dev_key(settings) if settings.seal_type == "dev" else None
        self._on_unseal: list[Callable[[], Awaitable[None]]] = []
        #: The barrier is open but the unseal work (``_unsealed``) is still running.
        self._opening = False
        self._on_seal: list[Callable[[], None]] = []

    @property
    def sealed(self) -> bool:
        """Sealed for serving until the unseal work is done (``_unsealed``)."""
        return bool(self._store.barrier.sealed) or self._opening

    @property
    def auto_unseal(self) -> bool:
        return self._settings.seal_type != "shamir"

    def on_unseal(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run after every unseal (re-encryption, token expiry): work that needs the keys."""
        self._on_unseal.append(callback)

    def on_seal(self, callback: Callable[[], None]) -> None:
        """Run on seal: drop what holds decrypted secrets (pools, caches)."""
        self._on_seal.append(callback)

    @property
    def keyring(self) -> Keyring:
        return self._store.barrier.keyring

    def _wrapping_key(self) -> bytes:
        if self._dev_key is not None:
            return self._dev_key
        return load_seal_key(self._settings, self._environ)

    async def status(self) -> dict[str, Any]:
        record = await self._store.get_seal()
        threshold = record.secret_threshold if record else 0
        return {
            "type": self._settings.seal_type if self.auto_unseal else "shamir",
            "initialized": record is not None,
            "sealed": self.sealed,
            "t": threshold,
            "n": record.secret_shares if record else 0,
            "progress": len(self._shares),
            "nonce": self._nonce,
            "version": "1.15.0+broker",
            "build_date": "",
            "migration": False,
            "recovery_seal": self.auto_unseal,
            "storage_type": "postgresql",
        }

    async def initialize(self, shares: int, threshold: int) -> InitResult:
        """A fresh root key and keyring. Shamir nodes stay sealed afterwards (Vault's
        behaviour: the operators prove they hold the shares); auto-unseal nodes open."""
        if not 1 <= threshold <= shares <= MAX_SHARES:
            raise InvalidRequest(
                f"need 1 <= secret_threshold <= secret_shares <= {MAX_SHARES}; "
                f"got {threshold} of {shares}"
            )
        if shares > 1 and threshold < 2:
            raise InvalidRequest("secret_threshold must be greater than one for multiple shares")
        if await self._store.get_seal() is not None:
            raise InvalidRequest("Vault is already initialized")
        root_key = os.urandom(KEY_BYTES)
        keyring = Keyring.generate()
        wrapped = (
            seal_bytes(self._wrapping_key(), root_key, ROOT_KEY_AAD) if self.auto_unseal else None
        )
        barrier = self._store.barrier
        barrier.install(root_key, keyring)
        try:
            if not await self._store.insert_seal(
                shares, threshold, barrier.sealed_keyring(keyring), wrapped
            ):
                raise InvalidRequest("Vault is already initialized")
            root_token = await self._create_root_token()
        except BaseException:
            barrier.seal()
            raise
        keys = split_root_key(root_key, shares, threshold)
        if self.auto_unseal:
            await self._unsealed()
        else:
            barrier.seal()
        log.info("initialized: %d share(s), threshold %d", shares, threshold)
        return InitResult(keys, root_token)

    async def submit_share(self, key_text: str, reset: bool = False) -> None:
        """One unseal key; the threshold-th opens the keyring. A wrong combination resets
        the progress, as in Vault."""
        if reset:
            self._shares.clear()
            self._nonce = ""
            return
        if not self.sealed:
            return
        record = await self._store.get_seal()
        if record is None:
            raise NotInitialized()
        share = parse_unseal_key(key_text)
        if share in self._shares:
            return  # Vault ignores a key given twice
        if not self._nonce:
            self._nonce = secrets.token_hex(16)
        self._shares.append(share)
        if len(self._shares) < record.secret_threshold:
            return
        shares, self._shares, self._nonce = self._shares, [], ""
        try:
            root_key = combine_shares(shares)
        except Exception as exc:
            raise InvalidRequest("the unseal keys do not combine into the root key") from exc
        self._store.barrier.unseal(root_key, record.keyring)
        await self._unsealed()

    async def try_auto_unseal(self) -> bool:
        """At start: unseal with the auto-unseal key, initialising first when allowed
        (``auto_init``, and always in dev mode). False while nothing can be done yet."""
        if not self.auto_unseal:
            return False
        record = await self._store.get_seal()
        if record is None:
            if not (self._settings.auto_init or self._settings.seal_type == "dev"):
                log.warning("storage is not initialized: PUT /v1/sys/init")
                return False
            try:
                await self.initialize(1, 1)
            except InvalidRequest:
                pass  # another node initialised first: unwrap its key below
            else:
                return True
            record = await self._store.get_seal()
            assert record is not None
        if record.wrapped_root_key is None:
            raise SealConfigError(
                "storage was initialized with Shamir keys; unseal it with sys/unseal "
                "(or migrate it) instead of an auto-unseal key"
            )
        try:
            root_key = open_bytes(self._wrapping_key(), record.wrapped_root_key, ROOT_KEY_AAD)
        except InvalidTag as exc:
            raise SealConfigError(
                "the auto-unseal key does not open this storage's root key"
                + (" (dev mode needs fresh storage)" if self._dev_key is not None else "")
            ) from exc
        self._store.barrier.unseal(root_key, record.keyring)
        await self._unsealed()
        return True

    async def _unsealed(self) -> None:
        """Run the unseal work (load audit devices, check and upgrade rows...) while the node
        still answers as sealed: nothing is served before its audit devices are loaded. A
        storage integrity failure during that work seals the node again, and so does storage
        failing (over) part-way, as Vault seals again when its post-unseal setup fails: it
        never serves half-unsealed, without the row key or the audit log it was meant to
        keep."""
        self._opening = True
        try:
            for callback in self._on_unseal:
                await callback()
        except BaseException:
            self._opening = False
            self.seal()
            raise
        finally:
            self._opening = False
        log.info("unsealed")

    def seal(self) -> None:
        self._shares.clear()
        self._nonce = ""
        self._store.barrier.seal()
        for callback in self._on_seal:
            callback()
        log.info("sealed")

    async def rotate(self) -> int:
        """A new data key term; old records keep theirs until the re-encrypt job moves them.
        Retried over a concurrent rotation on another node, never losing its term."""
        barrier = self._store.barrier
        for _ in range(5):
            record = await self._store.get_seal()
            if record is None:
                raise NotInitialized()
            barrier.reload(record.keyring)
            rotated = barrier.keyring.rotated()
            if await self._store.update_keyring(
                record.keyring_version, barrier.sealed_keyring(rotated)
            ):
                barrier.install(barrier.root_key, rotated)
                await self._store.notify_rotated()
                log.info("keyring rotated to term %d", rotated.active.term)
                # Old records move forward now, not at the job's next run.
                await self._store.reencrypt_connections()
                return int(rotated.active.term)
        raise BrokerError("the keyring kept changing during rotation; try again")

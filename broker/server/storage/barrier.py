"""The encryption barrier: what stands between the broker's secrets and its storage.

Like Vault's barrier, every secret value is sealed with AES-256-GCM under a *data key* of
the keyring before it is written, and each ciphertext names the key term that sealed it,
so a rotation adds a term without rewriting old records. The keyring itself is sealed by
the *root key*, which only ever lives in this process's memory: rebuilt from Shamir shares
by operators, or unwrapped with an auto-unseal key kept outside the storage database.

Pure cryptography and in-memory state: no storage, no HTTP.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field

import pyshamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.exceptions import IntegrityError, InvalidRequest, KeyringChanged, Sealed

KEY_BYTES = 32
_NONCE_BYTES = 12
#: Text ciphertexts look like ``enc:3:<base64 of nonce + ciphertext>``.
_TEXT_PREFIX = "enc:"
KEYRING_AAD = b"broker/keyring"
ROOT_KEY_AAD = b"broker/root-key"


def seal_bytes(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_bytes(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Raises ``InvalidTag`` when the key is wrong or the bytes were changed."""
    return AESGCM(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], aad)


@dataclass(frozen=True, slots=True)
class DataKey:
    term: int
    key: bytes = field(repr=False)
    installed_at: str


@dataclass(frozen=True, slots=True)
class Keyring:
    """Data keys by term (the newest encrypts), and the per-install HMAC keys."""

    keys: tuple[DataKey, ...]
    #: Keys tokens and secret IDs are stored under (HMAC-SHA256): a stolen table gives
    #: nothing to replay, and lookups stay exact-match.
    token_hmac_key: bytes = field(repr=False)
    #: Audit devices' ``hmac-sha256:`` values (Vault's per-install salt).
    audit_hmac_key: bytes = field(repr=False)
    #: Authenticates security-relevant rows (storage/integrity.py). None only in a keyring
    #: written before rows were authenticated: its presence, sealed under the root key,
    #: is what says that every row must carry a MAC.
    row_mac_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def generate(cls) -> Keyring:
        return cls(
            (DataKey(1, os.urandom(KEY_BYTES), _now_text()),),
            os.urandom(KEY_BYTES),
            os.urandom(KEY_BYTES),
            os.urandom(KEY_BYTES),
        )

    @property
    def active(self) -> DataKey:
        return self.keys[-1]

    def key_for(self, term: int) -> DataKey | None:
        return next((k for k in self.keys if k.term == term), None)

    def rotated(self) -> Keyring:
        new = DataKey(self.active.term + 1, os.urandom(KEY_BYTES), _now_text())
        return dataclasses.replace(self, keys=(*self.keys, new))

    def with_row_mac_key(self) -> Keyring:
        """The keyring of an install that authenticates its rows from now on."""
        return dataclasses.replace(self, row_mac_key=os.urandom(KEY_BYTES))

    def to_bytes(self) -> bytes:
        def b64(raw: bytes) -> str:
            return base64.b64encode(raw).decode()

        data = {
            "keys": [
                {"term": k.term, "key": b64(k.key), "installed_at": k.installed_at}
                for k in self.keys
            ],
            "token_hmac_key": b64(self.token_hmac_key),
            "audit_hmac_key": b64(self.audit_hmac_key),
        }
        if self.row_mac_key is not None:
            data["row_mac_key"] = b64(self.row_mac_key)
        return json.dumps(data).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Keyring:
        data = json.loads(raw)
        return cls(
            tuple(
                DataKey(k["term"], base64.b64decode(k["key"]), k["installed_at"])
                for k in data["keys"]
            ),
            base64.b64decode(data["token_hmac_key"]),
            base64.b64decode(data["audit_hmac_key"]),
            base64.b64decode(data["row_mac_key"]) if "row_mac_key" in data else None,
        )


def _now_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def split_root_key(root_key: bytes, shares: int, threshold: int) -> list[bytes]:
    """Vault's Shamir split (pyshamir is a port of Vault's own ``shamir`` package, so the
    shares have Vault's layout). One share with threshold one is the key itself, as in
    Vault."""
    if shares == 1:
        return [root_key]
    return [bytes(part) for part in pyshamir.split(root_key, shares, threshold)]


def combine_shares(shares: list[bytes]) -> bytes:
    if len(shares) == 1:
        return shares[0]
    return bytes(pyshamir.combine([bytearray(s) for s in shares]))


def parse_unseal_key(text: str) -> bytes:
    """Vault's CLI and hvac send hex; base64 is accepted too (``keys_base64``)."""
    text = text.strip()
    try:
        return bytes.fromhex(text)
    except ValueError:
        pass
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise InvalidRequest("unseal key must be hex or base64") from exc


class Barrier:
    """This node's view of the keyring: sealed (nothing in memory) or unsealed."""

    def __init__(self) -> None:
        self._root_key: bytes | None = None
        self._keyring: Keyring | None = None

    @property
    def sealed(self) -> bool:
        return self._keyring is None

    @property
    def keyring(self) -> Keyring:
        if self._keyring is None:
            raise Sealed()
        return self._keyring

    @property
    def root_key(self) -> bytes:
        if self._root_key is None:
            raise Sealed()
        return self._root_key

    def unseal(self, root_key: bytes, sealed_keyring: bytes) -> None:
        """Open the stored keyring with ``root_key``; a wrong key changes nothing."""
        try:
            raw = open_bytes(root_key, sealed_keyring, KEYRING_AAD)
        except (InvalidTag, ValueError) as exc:
            raise InvalidRequest("the unseal keys do not open the keyring") from exc
        self._root_key = root_key
        self._keyring = Keyring.from_bytes(raw)

    def reload(self, sealed_keyring: bytes) -> None:
        """Another node rotated: read the keyring again with the root key we hold.

        Only forward: a keyring is refused if it lacks a term or a key this node already
        holds. Every older keyring opens under the same root key, so a storage writer who
        put one back (from a backup taken before rows were authenticated, say) would
        otherwise make a running node drop its row key and pass every row without a MAC.
        """
        loaded = Keyring.from_bytes(open_bytes(self.root_key, sealed_keyring, KEYRING_AAD))
        current = self._keyring
        if current is not None:
            held = {key.term for key in current.keys}
            if not held <= {key.term for key in loaded.keys} or (
                current.row_mac_key is not None and loaded.row_mac_key != current.row_mac_key
            ):
                raise IntegrityError(
                    "the stored keyring is older than the one this node holds (a key term "
                    "or the row key is missing): refused, keeping the current one"
                )
        self._keyring = loaded

    def install(self, root_key: bytes, keyring: Keyring) -> None:
        self._root_key = root_key
        self._keyring = keyring

    def seal(self) -> None:
        self._root_key = None
        self._keyring = None

    def sealed_keyring(self, keyring: Keyring) -> bytes:
        return seal_bytes(self.root_key, keyring.to_bytes(), KEYRING_AAD)

    # -- record encryption ----------------------------------------------------------------

    def encrypt_text(self, plaintext: str, context: str) -> str:
        """``context`` (say, the connection's mount and name) is bound as associated data,
        so a ciphertext copied to another record does not decrypt there."""
        key = self.keyring.active
        sealed = seal_bytes(key.key, plaintext.encode(), context.encode())
        return f"{_TEXT_PREFIX}{key.term}:{base64.b64encode(sealed).decode()}"

    def decrypt_text(self, stored: str, context: str) -> str:
        """Plain text written before encryption existed passes through; the re-encrypt job
        replaces it."""
        term = ciphertext_term(stored)
        if term is None:
            return stored
        key = self.keyring.key_for(term)
        if key is None:
            raise KeyringChanged(term)
        sealed = base64.b64decode(stored.split(":", 2)[2])
        try:
            return open_bytes(key.key, sealed, context.encode()).decode()
        except InvalidTag as exc:
            raise IntegrityError() from exc

    def needs_reencryption(self, stored: str) -> bool:
        term = ciphertext_term(stored)
        return term is None or term < self.keyring.active.term

    # -- keyed hashes ---------------------------------------------------------------------

    def token_hmac(self, value: str) -> bytes:
        return hmac.new(self.keyring.token_hmac_key, value.encode(), hashlib.sha256).digest()

    def audit_hmac(self, value: str) -> str:
        digest = hmac.new(self.keyring.audit_hmac_key, value.encode(), hashlib.sha256)
        return "hmac-sha256:" + digest.hexdigest()

    def row_mac(self, message: bytes) -> bytes | None:
        """A row's MAC (storage/integrity.py), or None while the keyring has no row key
        (written before rows were authenticated, until the upgrade at unseal)."""
        key = self.keyring.row_mac_key
        return None if key is None else hmac.new(key, message, hashlib.sha256).digest()


def ciphertext_term(stored: str) -> int | None:
    if not stored.startswith(_TEXT_PREFIX):
        return None
    term, _, _ = stored[len(_TEXT_PREFIX) :].partition(":")
    return int(term) if term.isdigit() else None

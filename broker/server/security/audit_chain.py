"""The audit log's chain: entries as JSON lines, each carrying a keyed MAC of the line before.

A plain hash chain proves nothing against whoever can write the file: they edit a line and
recompute every hash after it. So each entry names ``prev_hash`` =
``hmac-sha256:v<term>:<hex>``, an HMAC-SHA256 of the previous line under the *audit chain
key* of keyring term ``<term>`` (HKDF of that term's data key, info ``broker/audit-chain``:
a key of its own, never the key that hashes values in entries, which ``sys/audit-hash``
exercises for anyone with access). Naming the term lets old lines verify after
``sys/rotate``. Each entry also carries ``chain`` (a random id given when a chain starts) and
``seq`` (its position in that chain), so checkpoints recorded in storage ("chain C had S
entries, the last with MAC M") reveal a file cut short, however its lines were rechained.

Pure functions, shared by the devices that write entries and by the two verifiers (the
server's ``sys/audit-verify`` and ``broker audit verify``, which opens storage with the
auto-unseal key). Files written before the keyed chain (``prev_hash`` a bare SHA-256) are
still read: their lines are checked as before and reported as unkeyed.
"""

from __future__ import annotations

import hashlib
import hmac as hmac_lib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.server.storage.barrier import Barrier, Keyring

#: ``prev_hash`` of a chain's first entry when nothing precedes it.
GENESIS = "0" * 64
_TAG = re.compile(r"^hmac-sha256:v([0-9]{1,9}):([0-9a-f]{64})$")
_LEGACY = re.compile(r"^[0-9a-f]{64}$")
_CHAIN_INFO = b"broker/audit-chain"
#: Keys whose values stay readable in the audit log: identifiers, never secrets.
_PLAIN_KEYS = frozenset(
    {"lease_id", "request_id", "accessor", "policies", "token_policies", "lease_duration"}
)


def line_hash(line: str) -> str:
    """The unkeyed SHA-256 of a line: how files written before the keyed chain link."""
    return hashlib.sha256(line.encode()).hexdigest()


def chain_key(data_key: bytes) -> bytes:
    """The audit chain key of one keyring term: derived, so it is never the data key
    itself, nor the audit HMAC key that values are hashed with."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_CHAIN_INFO).derive(data_key)


def mac_tag(key: bytes, term: int, line: str) -> str:
    digest = hmac_lib.new(key, line.encode(), hashlib.sha256).hexdigest()
    return f"hmac-sha256:v{term}:{digest}"


def parse_tag(tag: str) -> tuple[int, str] | None:
    """(term, hex digest) of ``hmac-sha256:v<term>:<hex>``, or None."""
    match = _TAG.match(tag)
    return (int(match.group(1)), match.group(2)) if match else None


class ChainKeys:
    """The chain keys of a keyring's terms, derived once per term. ``source`` is read at
    every use, so a rotation (or a reload after another node rotated) is seen at once."""

    def __init__(self, source: Barrier | Keyring) -> None:
        self._source = source
        self._derived: dict[tuple[int, bytes], bytes] = {}

    def _keyring(self) -> Keyring:
        return self._source.keyring if isinstance(self._source, Barrier) else self._source

    def _derive(self, term: int, data_key: bytes) -> bytes:
        cached = self._derived.get((term, data_key))
        if cached is None:
            cached = self._derived[(term, data_key)] = chain_key(data_key)
        return cached

    def tag(self, line: str) -> str:
        """The MAC of ``line`` under the active term."""
        active = self._keyring().active
        return mac_tag(self._derive(active.term, active.key), active.term, line)

    def check(self, tag: str, line: str) -> bool | None:
        """Whether ``tag`` is the MAC of ``line``; None when its term is not in this
        keyring (another install's line, or a term this node has not loaded)."""
        parsed = parse_tag(tag)
        if parsed is None:
            return False
        term, digest = parsed
        data_key = self._keyring().key_for(term)
        if data_key is None:
            return None
        expected = mac_tag(self._derive(term, data_key.key), term, line)
        return hmac_lib.compare_digest(expected.rsplit(":", 1)[1], digest)


def new_chain_id() -> str:
    return os.urandom(8).hex()


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Where the next entry continues: its chain, the last position, that line's MAC."""

    chain: str
    seq: int
    tag: str


def head_after(last_line: str | None, keys: ChainKeys) -> ChainHead:
    """The head to continue from, given a device's last line (None: nothing written). A
    keyed last line continues its chain; anything else starts a new chain, linked by MAC
    to the old last line (a log written before the keyed chain goes on in the same file)."""
    if not last_line:
        return ChainHead(new_chain_id(), 0, GENESIS)
    tag = keys.tag(last_line)
    try:
        entry = json.loads(last_line)
    except ValueError:
        entry = None
    if isinstance(entry, dict):
        chain, seq = entry.get("chain"), entry.get("seq")
        if isinstance(chain, str) and chain and type(seq) is int and seq > 0:
            return ChainHead(chain, seq, tag)
    return ChainHead(new_chain_id(), 0, tag)


def render_line(entry: Mapping[str, Any], chain: str, seq: int, prev_hash: str) -> str:
    """One JSON line. ``json.dumps`` escapes every control character and, with
    ``ensure_ascii``, every non-ASCII one (U+2028 too): no value, however a client spells
    it, can end the line or its string early."""
    return json.dumps(
        {**entry, "chain": chain, "seq": seq, "prev_hash": prev_hash},
        separators=(",", ":"),
        default=str,
    )


def hash_values(value: Any, hmac: Callable[[str], str], key: str = "") -> Any:
    """Every string leaf replaced by its HMAC, but for the identifier keys above."""
    if isinstance(value, Mapping):
        return {k: hash_values(v, hmac, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [hash_values(v, hmac, key) for v in value]
    if isinstance(value, str) and value and key not in _PLAIN_KEYS:
        return hmac(value)
    return value


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What storage recorded of a chain: it had ``seq`` entries, the last with MAC
    ``mac``, at ``created_at``."""

    chain: str
    seq: int
    mac: str
    created_at: str = ""


@dataclass(frozen=True, slots=True)
class ChainBreak:
    line_number: int
    reason: str


@dataclass(slots=True)
class ChainReport:
    """What a verification found. ``keyed`` false: MACs were not checked (no key)."""

    entries: int = 0
    keyed: bool = False
    legacy_entries: int = 0
    checkpoints_checked: int = 0
    chains: dict[str, tuple[int, int]] = field(default_factory=dict)
    broken: ChainBreak | None = None
    truncated: str | None = None

    @property
    def intact(self) -> bool:
        return self.broken is None and self.truncated is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "keyed": self.keyed,
            "legacy_entries": self.legacy_entries,
            "checkpoints_checked": self.checkpoints_checked,
            "break": None if self.broken is None else self.broken.line_number,
            "reason": None if self.broken is None else self.broken.reason,
            "truncated": self.truncated,
        }


def verify_lines(
    lines: Iterable[str],
    keys: ChainKeys | None = None,
    checkpoints: Sequence[Checkpoint] = (),
    latest: Checkpoint | None = None,
) -> ChainReport:
    """Check a log's lines in order; with ``keys`` every MAC, else the structure only.

    The first line's ``prev_hash`` is taken as given (a file may continue a chain begun in
    a rotated-away file); every later one must be the MAC of the line before it, and
    ``seq`` must count up within a chain. ``checkpoints`` are storage's records of the
    chains: the line at a checkpoint's position must carry the MAC recorded, and a chain
    in the file that ends before its last checkpoint was cut short. ``latest`` is the last
    checkpoint recorded for this target by the node that writes it: a file that does not
    hold its chain at all was replaced or emptied.
    """
    report = ChainReport(keyed=keys is not None)
    wanted = {(c.chain, c.seq): c for c in checkpoints}
    previous: str | None = None
    prev_chain: str | None = None
    prev_seq = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n")
        if not line:
            continue
        broken = _check_line(line, number, previous, prev_chain, prev_seq, keys)
        if isinstance(broken, ChainBreak):
            report.broken = broken
            return report
        chain, seq = broken
        if chain is None:
            report.legacy_entries += 1
        else:
            first, _ = report.chains.get(chain, (seq, seq))
            report.chains[chain] = (first, seq)
            point = wanted.get((chain, seq))
            if point is not None and keys is not None:
                report.checkpoints_checked += 1
                if not keys.check(point.mac, line):
                    report.broken = ChainBreak(
                        number,
                        f"entry {seq} of chain {chain} is not the one storage checkpointed "
                        "at that position: edited or replaced",
                    )
                    return report
        previous, prev_chain, prev_seq = line, chain, seq
        report.entries += 1
    if keys is not None:
        report.truncated = _truncation(report, checkpoints, latest)
    return report


def _check_line(
    line: str,
    number: int,
    previous: str | None,
    prev_chain: str | None,
    prev_seq: int,
    keys: ChainKeys | None,
) -> ChainBreak | tuple[str | None, int]:
    """(chain, seq) of a sound line (chain None: an unkeyed line), or the break."""
    try:
        entry = json.loads(line)
        prev = entry["prev_hash"]
    except (ValueError, KeyError, TypeError):
        return ChainBreak(number, "not an audit entry (unparseable or no prev_hash)")
    if not isinstance(prev, str):
        return ChainBreak(number, "not an audit entry (prev_hash is not text)")
    chain, seq = entry.get("chain"), entry.get("seq")
    if chain is None and seq is None and _LEGACY.match(prev):
        if prev_chain is not None:
            return ChainBreak(number, "an unkeyed entry after keyed ones: not the broker's")
        if previous is not None and prev != line_hash(previous):
            return ChainBreak(
                number,
                "prev_hash does not match the line before: that line or this one "
                "was edited, or lines between them were removed",
            )
        return None, 0
    if not isinstance(chain, str) or not chain or type(seq) is not int or seq < 1:
        return ChainBreak(number, "not an audit entry (no chain or seq)")
    if previous is None:
        if prev != GENESIS and parse_tag(prev) is None:
            return ChainBreak(number, "prev_hash is not a MAC")
        return chain, seq
    expected_seq = prev_seq + 1 if chain == prev_chain else 1
    if seq != expected_seq:
        return ChainBreak(
            number, f"entry {seq} follows entry {prev_seq}: entries were removed or reordered"
        )
    if parse_tag(prev) is None:
        return ChainBreak(number, "prev_hash is not a MAC of the line before")
    if keys is not None:
        matches = keys.check(prev, previous)
        if matches is None:
            return ChainBreak(
                number,
                "prev_hash names a key term this install does not have: the line comes "
                "from another install's log, or was forged",
            )
        if not matches:
            return ChainBreak(
                number,
                "prev_hash is not the MAC of the line before under the audit chain key: "
                "that line or this one was edited, lines between them were removed, or "
                "the line comes from another install's log",
            )
    return chain, seq


def _truncation(
    report: ChainReport, checkpoints: Sequence[Checkpoint], latest: Checkpoint | None
) -> str | None:
    known = [*checkpoints, *([latest] if latest is not None else [])]
    for chain, (_, last) in report.chains.items():
        points = [c for c in known if c.chain == chain and c.seq > last]
        if points:
            point = max(points, key=lambda c: c.seq)
            return (
                f"chain {chain} ends at entry {last}, but storage checkpointed entry "
                f"{point.seq} at {point.created_at or 'an earlier time'}: at least "
                f"{point.seq - last} entries were removed from the end"
            )
    if latest is not None and latest.chain not in report.chains:
        return (
            f"the file does not hold chain {latest.chain}, which storage checkpointed at "
            f"entry {latest.seq} ({latest.created_at or 'earlier'}) for this file: it was "
            "replaced or emptied"
        )
    return None

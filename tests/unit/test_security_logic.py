"""Pure logic of the security work: ACL precedence, the barrier's encryption, Shamir
shares, the audit hash chain and the rate limiter's buckets."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from broker.exceptions import (
    IntegrityError,
    InvalidRequest,
    KeyringChanged,
    Sealed,
    TooManyRequests,
)
from broker.server.auth.acl import ACL, parse_policy
from broker.server.security.audit_chain import (
    GENESIS,
    ChainKeys,
    Checkpoint,
    hash_values,
    head_after,
    line_hash,
    render_line,
    verify_lines,
)
from broker.server.security.ratelimit import RateLimiter
from broker.server.storage.barrier import Barrier, Keyring, combine_shares, split_root_key


def _acl(text: str) -> ACL:
    return ACL(parse_policy(text))


def test_most_specific_path_wins_and_deny_overrides() -> None:
    acl = _acl(
        """
        path "secret/*" { capabilities = ["read"] }
        path "secret/foo" { capabilities = ["update"] }
        path "secret/+/bar" { capabilities = ["list"] }
        path "secret/team/*" { capabilities = ["deny"] }
        path "database/creds/app-*" { capabilities = ["read"] }
        """
    )
    assert acl.allows("secret/foo", "update") and not acl.allows("secret/foo", "read")
    assert acl.allows("secret/other", "read")
    assert acl.capabilities("secret/x/bar") == {"list"}  # '+' beats the earlier glob
    assert not acl.allows("secret/team/x", "read")
    assert acl.allows("database/creds/app-web", "read")
    assert not acl.allows("database/creds/other", "read")
    assert not acl.allows("sys/mounts", "read")  # default deny


def test_policies_merge_by_pattern_and_deny_wins_the_merge() -> None:
    rules = parse_policy('path "a/*" { capabilities = ["read"] }') + parse_policy(
        'path "a/*" { capabilities = ["list"] }'
    )
    assert ACL(rules).capabilities("a/b") == {"read", "list"}
    rules += parse_policy('path "a/*" { capabilities = ["deny"] }')
    assert ACL(rules).capabilities("a/b") == {"deny"}


def test_sudo_and_list_paths() -> None:
    acl = _acl('path "sys/leases/revoke-prefix/*" { capabilities = ["update"] }')
    assert not acl.allows("sys/leases/revoke-prefix/database/", "update", sudo=True)
    acl = _acl(
        """
        path "sys/leases/revoke-prefix/*" { capabilities = ["update", "sudo"] }
        path "database/roles/" { capabilities = ["list"] }
        """
    )
    assert acl.allows("sys/leases/revoke-prefix/database/", "update", sudo=True)
    assert acl.allows("database/roles", "list")  # a LIST is checked with the slash
    assert ACL((), root=True).allows("anything", "delete", sudo=True)


@pytest.mark.parametrize(
    "text",
    [
        'path "a" { capabilities = ["fly"] }',
        'path "a/*/b" { capabilities = ["read"] }',
        'path "a" { capabilities = "read" }',
        "path {",
        "",
        '{"path": 1}',
    ],
)
def test_bad_policies_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_policy(text)


def test_barrier_binds_ciphertext_to_its_record_and_term() -> None:
    barrier = Barrier()
    with pytest.raises(Sealed):
        barrier.encrypt_text("x", "ctx")
    root = os.urandom(32)
    barrier.install(root, Keyring.generate())
    sealed = barrier.encrypt_text("s3cret", "connections/a")
    assert sealed.startswith("enc:1:") and "s3cret" not in sealed
    assert barrier.decrypt_text(sealed, "connections/a") == "s3cret"
    with pytest.raises(IntegrityError):
        barrier.decrypt_text(sealed, "connections/b")  # copied to another record
    assert barrier.decrypt_text("legacy plain", "x") == "legacy plain"
    rotated = barrier.keyring.rotated()
    stored = barrier.sealed_keyring(rotated)
    other = Barrier()
    other.unseal(root, barrier.sealed_keyring(barrier.keyring))
    barrier.install(root, rotated)
    newer = barrier.encrypt_text("s3cret", "connections/a")
    assert newer.startswith("enc:2:") and barrier.needs_reencryption(sealed)
    with pytest.raises(KeyringChanged):
        other.decrypt_text(newer, "connections/a")
    other.reload(stored)
    assert other.decrypt_text(newer, "connections/a") == "s3cret"
    with pytest.raises(InvalidRequest):
        Barrier().unseal(os.urandom(32), stored)


def test_any_threshold_of_shares_rebuilds_the_root_key() -> None:
    root = os.urandom(32)
    shares = split_root_key(root, 5, 3)
    assert combine_shares(shares[:3]) == root
    assert combine_shares([shares[4], shares[1], shares[2]]) == root
    assert combine_shares(shares[:2]) != root
    assert split_root_key(root, 1, 1) == [root]


def _keyed_log(keys: ChainKeys, count: int, first: str | None = None) -> list[str]:
    lines, head = [], head_after(first, keys)
    for n in range(count):
        line = render_line({"n": n}, head.chain, head.seq + 1, head.tag)
        head = type(head)(head.chain, head.seq + 1, keys.tag(line))
        lines.append(line)
    return lines


def test_audit_chain_detects_edits_and_deletions() -> None:
    keys = ChainKeys(Keyring.generate())
    lines = _keyed_log(keys, 5)
    report = verify_lines(iter(lines), keys)
    assert (report.entries, report.broken, report.truncated) == (5, None, None)
    assert json.loads(lines[0])["prev_hash"] == GENESIS
    assert json.loads(lines[1])["prev_hash"].startswith("hmac-sha256:v1:")
    edited = [*lines]
    edited[1] = edited[1].replace('"n":1', '"n":7')
    report = verify_lines(iter(edited), keys)
    assert report.broken is not None and report.broken.line_number == 3 and report.entries == 2
    report = verify_lines(iter(lines[:2] + lines[3:]), keys)
    assert report.broken is not None and report.broken.line_number == 3
    assert verify_lines(iter(["not json"]), keys).broken == verify_lines(["x"]).broken


def test_audit_chain_cannot_be_recomputed_without_the_key() -> None:
    """The old attack: edit a line and recompute every link after it. A plain hash (or
    another install's key) does not make a MAC under this keyring's chain key."""
    keyring = Keyring.generate()
    keys = ChainKeys(keyring)
    lines = _keyed_log(keys, 4)
    forged, head = [lines[0]], lines[0]
    forger = ChainKeys(Keyring.generate())
    for line in lines[1:]:
        entry = json.loads(line)
        entry["n"] = 99
        entry["prev_hash"] = forger.tag(head)
        head = json.dumps(entry, separators=(",", ":"))
        forged.append(head)
    assert verify_lines(iter(forged)).broken is None  # the structure alone holds
    report = verify_lines(iter(forged), keys)
    assert report.broken is not None and report.broken.line_number == 2
    # A checkpoint past the end is a truncation; one that does not match is an edit.
    tag = keys.tag(lines[3])
    report = verify_lines(
        iter(lines[:3]), keys, [Checkpoint(json.loads(lines[0])["chain"], 4, tag)]
    )
    assert report.truncated is not None and "at least 1 entries" in report.truncated
    report = verify_lines(iter(lines), keys, [Checkpoint(json.loads(lines[0])["chain"], 4, tag)])
    assert report.intact and report.checkpoints_checked == 1
    # After a rotation new links name the new term; the old ones still verify.
    rotated = ChainKeys(keyring.rotated())
    more = _keyed_log(rotated, 2, first=lines[-1])
    assert json.loads(more[0])["prev_hash"].startswith("hmac-sha256:v2:")
    assert verify_lines(iter(lines + more), rotated).intact


def test_an_old_unkeyed_log_is_continued_by_the_keyed_chain() -> None:
    keys = ChainKeys(Keyring.generate())
    old, head = [], GENESIS
    for n in range(3):
        line = json.dumps({"n": n, "prev_hash": head}, separators=(",", ":"))
        head = line_hash(line)
        old.append(line)
    lines = old + _keyed_log(keys, 2, first=old[-1])
    report = verify_lines(iter(lines), keys)
    assert report.intact and report.legacy_entries == 3 and report.entries == 5
    # An unkeyed line cannot be slipped in after keyed ones.
    assert verify_lines(iter([*lines, old[0]]), keys).broken is not None


def test_audit_hashes_every_string_but_identifiers() -> None:
    hashed = hash_values(
        {"password": "p", "nested": ["a", {"b": "c"}], "lease_id": "l", "n": 3, "ok": True},
        lambda v: f"H({v})",
    )
    assert json.dumps(hashed, sort_keys=True) == json.dumps(
        {
            "password": "H(p)",
            "nested": ["H(a)", {"b": "H(c)"}],
            "lease_id": "l",
            "n": 3,
            "ok": True,
        },
        sort_keys=True,
    )


def test_rate_limiter_buckets() -> None:
    limiter = RateLimiter(rate=2, burst=2)
    limiter.take("a", "address")
    limiter.take("a", "address")
    with pytest.raises(TooManyRequests) as caught:
        limiter.take("a", "address")
    assert 0 < caught.value.retry_after <= 0.5 + 1e-6
    limiter.take("b", "address")  # another client has its own bucket
    RateLimiter(rate=0).take("a", "address")  # off


def test_display_names_cannot_reach_sql_unsanitised() -> None:
    from broker.server.engines.templates import UsernameTemplate

    template = UsernameTemplate("{{.DisplayName}}_{{.RoleName}}")
    assert template.render("token-ci", "ro") == "token-ci_ro"
    with pytest.raises(InvalidRequest):
        template.render('x"; DROP ROLE postgres; --', "ro")


def test_a_running_node_refuses_a_keyring_put_back_from_before() -> None:
    """Every older keyring opens under the same root key: a node must not load one that
    lacks a term or the row key it holds (it would then pass rows without a MAC)."""
    root = os.urandom(32)
    old = Keyring.generate()
    old = dataclasses.replace(old, row_mac_key=None)  # before rows were authenticated
    current = old.with_row_mac_key().rotated()
    barrier = Barrier()
    barrier.install(root, current)
    with pytest.raises(IntegrityError):
        barrier.reload(barrier.sealed_keyring(old))
    assert barrier.keyring.row_mac_key == current.row_mac_key
    with pytest.raises(IntegrityError):  # a term dropped
        barrier.reload(barrier.sealed_keyring(dataclasses.replace(current, keys=current.keys[:1])))
    barrier.reload(barrier.sealed_keyring(current.rotated()))  # forward is fine
    assert barrier.keyring.active.term == current.active.term + 1

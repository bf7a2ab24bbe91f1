"""Pure logic of the security work: ACL precedence, the barrier's encryption, Shamir
shares, the audit hash chain and the rate limiter's buckets."""

from __future__ import annotations

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
    hash_values,
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


def test_audit_chain_detects_edits_and_deletions() -> None:
    lines, head = [], GENESIS
    for n in range(5):
        line = render_line({"n": n}, head)
        head = line_hash(line)
        lines.append(line)
    assert verify_lines(iter(lines)) == (5, None)
    edited = [*lines]
    edited[1] = edited[1].replace('"n":1', '"n":7')
    count, broken = verify_lines(iter(edited))
    assert broken is not None and broken.line_number == 3 and count == 2
    count, broken = verify_lines(iter(lines[:2] + lines[3:]))
    assert broken is not None and broken.line_number == 3
    _, broken = verify_lines(iter(["not json"]))
    assert broken is not None and broken.line_number == 1


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

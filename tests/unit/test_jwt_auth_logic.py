"""The JWT/OIDC method's pure parts: Vault's glob and JSON-pointer rules, the registered
claims with cap's leeway rules, the signature check's algorithm and key choices, and the
key cache's refetch limit (a fake fetcher counts the fetches, a fake clock steps time)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import RSAAlgorithm

from broker.server.auth.jwt_claims import (
    ClaimError,
    Expected,
    check_bound_claims_values,
    get_claim,
    glob_match,
    group_names,
    mapped_metadata,
    user_name,
    validate_bound_claims,
    validate_registered,
)
from broker.server.auth.jwt_keys import (
    SUPPORTED_ALGS,
    Fetched,
    KeySets,
    KeySource,
    KeySourceError,
    SignatureError,
    VerifyingKey,
    candidates,
    parse_jwks,
    read_header,
    verify_with,
)

NOW = 1_800_000_000


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("repo:org/app:*", "repo:org/app:ref:refs/heads/main", True),
        ("repo:org/app:*", "repo:org/app:", True),
        ("repo:org/app:*", "repo:org/application:ref", False),
        ("*", "", True),
        ("", "", True),
        ("", "x", False),
        ("a*b*c", "abc", True),
        ("a*b*c", "aXbYc", True),
        ("a*b*c", "acb", False),
        ("a*a", "a", False),
        ("ab*bc", "abc", False),
        ("*main", "refs/heads/main", True),
        ("refs/heads/ma?n", "refs/heads/main", False),  # only '*' is special
        ("exact", "exact", True),
    ],
)
def test_glob_matches_go_glob(pattern: str, subject: str, matches: bool) -> None:
    assert glob_match(pattern, subject) is matches


def test_json_pointer_claims() -> None:
    claims = {"a": {"b/c": [{"d~e": "x"}]}, "plain": 1}
    assert get_claim(claims, "/a/b~1c/0/d~0e") == "x"
    assert get_claim(claims, "plain") == 1
    assert get_claim(claims, "/a/missing") is None
    assert get_claim(claims, "/a/b~1c/7") is None
    assert get_claim(claims, "/plain/deeper") is None
    assert get_claim(claims, "a/b") is None  # no leading '/': a plain claim name


def test_bound_claims_exact_lists_and_types() -> None:
    claims = {"ref": "refs/heads/main", "groups": ["a", "b"], "n": 42, "flag": True}
    validate_bound_claims({"ref": ["refs/heads/dev", "refs/heads/main"]}, claims, glob=False)
    validate_bound_claims({"groups": "b", "n": 42, "flag": True}, claims, glob=False)
    for bound in ({"n": "42"}, {"flag": 1}, {"n": True}, {"ref": "refs/heads/dev"}):
        with pytest.raises(ClaimError, match="does not match"):
            validate_bound_claims(bound, claims, glob=False)
    with pytest.raises(ClaimError, match='claim "missing" is missing'):
        validate_bound_claims({"missing": "x"}, claims, glob=False)
    with pytest.raises(ClaimError, match="not a string or list"):
        validate_bound_claims({"obj": "x"}, {"obj": {"k": "v"}}, glob=False)
    validate_bound_claims({"groups": "b*"}, claims, glob=True)
    with pytest.raises(ClaimError):
        check_bound_claims_values({"x": 1}, glob=True)
    with pytest.raises(ClaimError):
        check_bound_claims_values({"x": {"nested": "no"}}, glob=False)
    with pytest.raises(ClaimError):
        check_bound_claims_values({"x": []}, glob=False)


def test_registered_claims_and_leeways() -> None:
    base = {"iss": "i", "sub": "s", "aud": ["a", "b"], "iat": NOW, "exp": NOW + 60}
    validate_registered(base, Expected("i", "s", ("b",)), NOW)
    for expected, message in (
        (Expected(issuer="other"), "invalid issuer"),
        (Expected(subject="other"), "invalid subject"),
        (Expected(audiences=("c",)), "invalid audience"),
    ):
        with pytest.raises(ClaimError, match=message):
            validate_registered(base, expected, NOW)
    # The clock skew leeway (default 60 s; -1 none) widens exp, nbf and iat.
    expired = {**base, "exp": NOW - 30}
    validate_registered(expired, Expected(), NOW)
    with pytest.raises(ClaimError, match="token is expired"):
        validate_registered(expired, Expected(clock_skew_leeway=-1), NOW)
    with pytest.raises(ClaimError, match="token is expired"):
        validate_registered({**base, "exp": NOW - 61}, Expected(), NOW)
    validate_registered({**base, "exp": NOW - 100}, Expected(clock_skew_leeway=120), NOW)
    # A missing exp is iat (or nbf) plus the expiration leeway (default 150 s).
    only_iat = {"iat": NOW - 200}
    validate_registered(only_iat, Expected(), NOW)  # 200 <= 150 + 60
    with pytest.raises(ClaimError, match="token is expired"):
        validate_registered(only_iat, Expected(expiration_leeway=100), NOW)
    with pytest.raises(ClaimError, match="token is expired"):
        validate_registered(only_iat, Expected(expiration_leeway=-1, clock_skew_leeway=-1), NOW)
    # A missing nbf is iat, else exp minus the not-before leeway.
    with pytest.raises(ClaimError, match="token not yet valid"):
        validate_registered({"exp": NOW + 1000}, Expected(), NOW)
    validate_registered({"exp": NOW + 100}, Expected(), NOW)
    with pytest.raises(ClaimError, match="token not yet valid"):
        validate_registered({"nbf": NOW + 61, "exp": NOW + 300}, Expected(), NOW)
    with pytest.raises(ClaimError, match="no issued at"):
        validate_registered({"iss": "i"}, Expected(), NOW)
    for bad in ({"exp": "soon"}, {"exp": True}, {"iat": NOW, "aud": 5}, {"iat": NOW, "sub": 5}):
        with pytest.raises(ClaimError):
            validate_registered(bad, Expected(), NOW)


def test_user_metadata_and_groups() -> None:
    claims = {"u": "me", "n": 7, "b": True, "f": 1.9, "l": ["x"], "o": {"p": "q"}, "g": "one"}
    assert user_name(claims, "u", False) == "me"
    assert user_name(claims, "n", False) == "7"
    assert user_name(claims, "/o/p", True) == "q"
    for name in ("b", "f", "l", "o"):
        with pytest.raises(ClaimError, match="could not be converted to string"):
            user_name(claims, name, False)
    with pytest.raises(ClaimError, match="not found in token"):
        user_name(claims, "/o/p", False)  # a pointer only when asked for
    assert mapped_metadata(claims, {"u": "user", "b": "flag", "f": "num", "none": "x"}) == {
        "user": "me",
        "flag": "true",
        "num": "1",
    }
    with pytest.raises(ClaimError, match="error converting claim 'l' to string"):
        mapped_metadata(claims, {"l": "list"})
    assert group_names({"g": ["a", "", "b"]}, "g") == ["a", "b"]
    assert group_names(claims, "g") == ["one"]
    with pytest.raises(ClaimError, match="not found in token"):
        group_names(claims, "missing")
    with pytest.raises(ClaimError):
        group_names({"g": ["a", 1]}, "g")


def _rsa_jwk(kid: str) -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid)
    return key, jwk


def test_header_and_key_choice() -> None:
    key, jwk = _rsa_jwk("k1")
    token = jwt.encode({"a": 1}, key, "RS256", headers={"kid": "k1"})
    keys = parse_jwks({"keys": [jwk, {"kty": "oct", "k": "c2VjcmV0"}, {**jwk, "use": "enc"}]})
    assert [k.kid for k in keys] == ["k1"]  # symmetric and encryption keys are skipped
    header = read_header(token, SUPPORTED_ALGS)
    assert verify_with(token, header, candidates(keys, header)) == {"a": 1}
    with pytest.raises(SignatureError, match="unexpected algorithm"):
        read_header(token, ("ES256",))
    hs = jwt.encode({"a": 1}, "s" * 32, "HS256")
    with pytest.raises(SignatureError, match="unexpected algorithm"):
        read_header(hs, (*SUPPORTED_ALGS, "HS256"))  # never, whatever a config says
    ec_key = ec.generate_private_key(ec.SECP384R1())
    es = jwt.encode({"a": 1}, ec_key, "ES384", headers={"kid": "k1"})
    es_header = read_header(es, SUPPORTED_ALGS)
    assert candidates(keys, es_header) == []  # an RSA key never verifies ES384
    ec_keys = (VerifyingKey(ec_key.public_key(), "k1"),)
    assert candidates(ec_keys, read_header(token, SUPPORTED_ALGS)) == []
    assert verify_with(es, es_header, candidates(ec_keys, es_header)) == {"a": 1}
    # A JWK's own alg binds it; a kid-less token tries every key that fits.
    bound = (VerifyingKey(key.public_key(), "k1", "RS512"),)
    assert candidates(bound, header) == []
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_token = jwt.encode({"a": 2}, ed, "EdDSA")
    ed_header = read_header(ed_token, SUPPORTED_ALGS)
    mixed = (*ec_keys, VerifyingKey(ed.public_key()))
    assert verify_with(ed_token, ed_header, candidates(mixed, ed_header)) == {"a": 2}
    with pytest.raises(KeySourceError):
        parse_jwks({"not": "a jwks"})


class FakeProvider:
    """Counts fetches; each returns the key set it holds then, after a pause."""

    def __init__(self) -> None:
        self.calls = 0
        self.keys: tuple[VerifyingKey, ...] = ()
        self.fail = False

    async def __call__(self, source: KeySource, jwks_uri: str) -> Fetched:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise KeySourceError("down")
        return Fetched(self.keys, "http://jwks")


async def test_refetch_limit_and_shared_fetch() -> None:
    clock = [1000.0]
    provider = FakeProvider()
    key_a = VerifyingKey(rsa.generate_private_key(65537, 2048).public_key(), "a")
    key_b = VerifyingKey(key_a.key, "b")
    provider.keys = (key_a,)
    keys = KeySets(provider, min_refetch=10, max_age=600, clock=lambda: clock[0])
    source = KeySource(jwks_url="http://jwks")
    assert await keys.current("m", source) == (key_a,)  # the first use fetches
    assert provider.calls == 1
    assert await keys.current("m", source) == (key_a,)
    assert provider.calls == 1
    # A rotation right after the first fetch waits for the interval.
    provider.keys = (key_b,)
    assert await keys.refetch("m", source) is None
    clock[0] += 10
    # Concurrent unknown kids share one fetch; later ones inside the interval get none.
    results = await asyncio.gather(*(keys.refetch("m", source) for _ in range(50)))
    assert provider.calls == 2
    assert all(r == (key_b,) for r in results)
    assert [await keys.refetch("m", source) for _ in range(20)] == [None] * 20
    assert provider.calls == 2
    # Keys older than max_age are fetched again; if that fails, the old ones serve.
    clock[0] += 600
    provider.fail = True
    assert await keys.current("m", source) == (key_b,)
    assert provider.calls == 3
    assert await keys.current("m", source) == (key_b,)  # a failed fetch counts too
    assert provider.calls == 3
    # Priming (a config write) does not count against the limit; a new source is a new
    # entry.
    provider.fail = False
    other = KeySource(jwks_url="http://other")
    keys.prime("m", other, Fetched((key_a,), "http://other"))
    assert await keys.current("m", other) == (key_a,)
    assert await keys.refetch("m", other) == (key_b,)
    assert provider.calls == 4
    # Nothing cached and nothing fetchable: an error, not an empty set.
    provider.fail = True
    with pytest.raises(KeySourceError):
        await keys.current("n", source)
    keys.close()

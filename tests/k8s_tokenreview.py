"""A stand-in for a Kubernetes API server's TokenReview endpoint, for the Kubernetes auth
tests (no real API server can run here).

It is the "cluster": it owns an RSA key, signs the service-account tokens it issues
(legacy secret-based tokens and projected, audience-bound ones, with the claims real
clusters put in them), and serves ``POST /apis/authentication.k8s.io/v1/tokenreviews``
over TLS on 127.0.0.1 (certificates from ``trustme``; its CA is what the broker is given as
``kubernetes_ca_cert``) and, on a second port, over plain HTTP.

Faithful to ``authentication.k8s.io/v1`` as the API server answers it:

- the caller authenticates with ``Authorization: Bearer <token>``: a token the cluster
  does not accept gets a ``401`` ``Status`` object, a service account not bound to
  ``system:auth-delegator`` a ``403`` ``Status`` (the RBAC message);
- the answer is a ``TokenReview`` echoing the spec, with ``status.authenticated``,
  ``status.user`` (``username`` ``system:serviceaccount:NS:NAME``, ``uid``, ``groups``,
  ``extra`` for pod-bound tokens) and ``status.audiences``; an invalid token gets
  ``status.error`` (bad signature, expired, wrong audience) and a revoked one (its secret
  or pod deleted) a plain ``authenticated: false``;
- legacy tokens are audience-agnostic, projected ones must share an audience with
  ``spec.audiences`` (the API server's own audiences when none are asked for).

Two knobs no real API server has: ``answer_as`` makes a review name another user than
the token's, and ``answer_audiences`` report other audiences than those asked for,
standing in for an authenticator that disagrees with the JWT's claims or is not
audience-aware, so the broker's comparisons of the answer can be tested.
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

LEGACY_ISSUER = "kubernetes/serviceaccount"
PROJECTED_ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCES = ("https://kubernetes.default.svc.cluster.local",)
REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_key_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def certificate_pem(key: rsa.RSAPrivateKey) -> str:
    """A self-signed certificate of ``key`` (hvac accepts ``pem_keys`` only as
    certificates; Vault takes the public key out of it)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "service-account-signer")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Review:
    """One TokenReview the cluster answered: the bearer it came with, what was asked."""

    bearer: str
    body: dict[str, Any]
    status: int


@dataclass
class FakeCluster:
    key: rsa.RSAPrivateKey = field(default_factory=new_rsa_key)
    ca: trustme.CA = field(default_factory=trustme.CA)
    #: (namespace, name) -> uid of the service accounts that exist.
    accounts: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Service accounts bound to ``system:auth-delegator``: they may create TokenReviews.
    delegators: set[tuple[str, str]] = field(default_factory=set)
    #: Tokens whose secret or pod was deleted.
    revoked: set[str] = field(default_factory=set)
    #: Token -> the user a review names instead (see the module docstring).
    answer_as: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Token -> the ``status.audiences`` a review reports instead: an authenticator that
    #: is not audience-aware.
    answer_audiences: dict[str, list[str]] = field(default_factory=dict)
    reviews: list[Review] = field(default_factory=list)
    https_url: str = ""
    http_url: str = ""
    _runner: web.AppRunner | None = None

    @property
    def ca_pem(self) -> str:
        return self.ca.cert_pem.bytes().decode()

    # -- issuing ---------------------------------------------------------------------------

    def service_account(self, namespace: str, name: str) -> str:
        return self.accounts.setdefault((namespace, name), str(uuid.uuid4()))

    def delete_service_account(self, namespace: str, name: str) -> None:
        self.accounts.pop((namespace, name), None)

    def legacy_token(
        self, namespace: str, name: str, *, secret: str = "", key: rsa.RSAPrivateKey | None = None
    ) -> str:
        """A secret-based token as Kubernetes < 1.24 mounted them: no times, no audience."""
        uid = self.service_account(namespace, name)
        claims = {
            "iss": LEGACY_ISSUER,
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/secret.name": secret or f"{name}-token-x7k2p",
            "kubernetes.io/serviceaccount/service-account.name": name,
            "kubernetes.io/serviceaccount/service-account.uid": uid,
        }
        return self._sign(claims, key)

    def projected_token(
        self,
        namespace: str,
        name: str,
        *,
        audiences: tuple[str, ...] = API_AUDIENCES,
        ttl: int = 3600,
        issued: float | None = None,
        key: rsa.RSAPrivateKey | None = None,
    ) -> str:
        """A bound token as the kubelet projects it into a pod (``TokenRequest``)."""
        uid = self.service_account(namespace, name)
        now = int(time.time() if issued is None else issued)
        claims = {
            "aud": list(audiences),
            "exp": now + ttl,
            "iat": now,
            "nbf": now,
            "iss": PROJECTED_ISSUER,
            "jti": str(uuid.uuid4()),
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "node-1", "uid": str(uuid.uuid4())},
                "pod": {"name": f"{name}-6d4cf56db6-abcde", "uid": str(uuid.uuid4())},
                "serviceaccount": {"name": name, "uid": uid},
            },
        }
        return self._sign(claims, key)

    def _sign(self, claims: dict[str, Any], key: rsa.RSAPrivateKey | None) -> str:
        kid = "stand-in-signing-key"
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": kid})

    # -- authenticating ----------------------------------------------------------------------

    def _authenticate(
        self, token: str, wanted: tuple[str, ...]
    ) -> tuple[dict[str, Any] | None, tuple[str, ...], str]:
        """(user, audiences, error) as the API server's authenticators decide them."""
        try:
            claims = jwt.decode(
                token, self.key.public_key(), algorithms=["RS256"], options={"verify_aud": False}
            )
        except jwt.ExpiredSignatureError:
            return None, (), "[invalid bearer token, service account token has expired]"
        except jwt.PyJWTError:
            return (
                None,
                (),
                "[invalid bearer token, square/go-jose: error in cryptographic primitive]",
            )
        if token in self.revoked:
            return None, (), ""
        projected = claims.get("kubernetes.io")
        if isinstance(projected, dict):
            namespace = projected["namespace"]
            name, uid = projected["serviceaccount"]["name"], projected["serviceaccount"]["uid"]
            granted = tuple(a for a in wanted if a in claims.get("aud", []))
            if not granted:
                return (
                    None,
                    (),
                    f"[invalid bearer token, token audiences {json.dumps(claims.get('aud'))} "
                    f"is invalid for the target audiences {json.dumps(list(wanted))}]",
                )
            extra = {
                "authentication.kubernetes.io/pod-name": [projected["pod"]["name"]],
                "authentication.kubernetes.io/pod-uid": [projected["pod"]["uid"]],
                "authentication.kubernetes.io/credential-id": [f"JTI={claims['jti']}"],
            }
        else:
            namespace = claims["kubernetes.io/serviceaccount/namespace"]
            name = claims["kubernetes.io/serviceaccount/service-account.name"]
            uid = claims["kubernetes.io/serviceaccount/service-account.uid"]
            # Audience-agnostic: valid for the API server's own audiences only, as
            # Kubernetes' WrapAudienceAgnosticToken decides (no error, just false).
            granted, extra = tuple(a for a in wanted if a in API_AUDIENCES), {}
            if not granted:
                return None, (), ""
        if self.accounts.get((namespace, name)) != uid:
            return None, (), ""  # the service account was deleted (or recreated)
        user = {
            "username": f"system:serviceaccount:{namespace}:{name}",
            "uid": uid,
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
                "system:authenticated",
            ],
        }
        if extra:
            user["extra"] = extra
        return user, granted, ""

    async def _tokenreviews(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        bearer = header[7:] if header.startswith("Bearer ") else ""
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        caller, _, _ = self._authenticate(bearer, API_AUDIENCES) if bearer else (None, (), "")
        if caller is None:
            return self._status(request, bearer, body, 401, "Unauthorized", "Unauthorized")
        namespace, name = caller["username"].split(":")[2:]
        if (namespace, name) not in self.delegators:
            message = (
                "tokenreviews.authentication.k8s.io is forbidden: User "
                f'"{caller["username"]}" cannot create resource "tokenreviews" in API group '
                '"authentication.k8s.io" at the cluster scope'
            )
            return self._status(request, bearer, body, 403, "Forbidden", message)
        spec = body.get("spec") if isinstance(body, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("token"), str):
            return self._status(request, bearer, body, 400, "BadRequest", "spec.token: Required")
        wanted = tuple(spec.get("audiences") or API_AUDIENCES)
        user, granted, error = self._authenticate(spec["token"], wanted)
        status: dict[str, Any] = {"user": {}}
        if user is not None:
            override = self.answer_as.get(spec["token"])
            status = {"authenticated": True, "user": {**user, **(override or {})}}
            status["audiences"] = self.answer_audiences.get(spec["token"], list(granted))
        elif error:
            status["error"] = error
        answer = {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }
        self.reviews.append(Review(bearer, body, 201))
        return web.json_response(answer, status=201)

    def _status(
        self, request: web.Request, bearer: str, body: Any, code: int, reason: str, message: str
    ) -> web.Response:
        self.reviews.append(Review(bearer, body if isinstance(body, dict) else {}, code))
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
        if code == 403:
            status["details"] = {"group": "authentication.k8s.io", "kind": "tokenreviews"}
        return web.json_response(status, status=code)

    # -- serving ---------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(REVIEW_PATH, self._tokenreviews)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(tls)
        secure = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls)
        plain = web.TCPSite(self._runner, "127.0.0.1", 0)
        await secure.start()
        await plain.start()
        secure_port, plain_port = (_port(site) for site in (secure, plain))
        self.https_url = f"https://127.0.0.1:{secure_port}"
        self.http_url = f"http://127.0.0.1:{plain_port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp keeps the listening sockets there
    assert server is not None
    sockets = getattr(server, "sockets", None)
    assert sockets
    return int(sockets[0].getsockname()[1])

"""The one layer over asyncpg: the pool, one-statement round trips, transactions,
LISTEN/NOTIFY, and the translation of driver errors into the broker's own.

Every store (leases.py, catalog.py...) runs its named queries through a ``Connector``, so
nothing above this module sees asyncpg's exceptions, and the ``Store`` base gives each
store the same short helpers over its own SQL file.

Failover: the storage DSN may name several hosts (``postgresql://u@h1:5432,h2:5432/db``).
New connections go to the first that answers and takes writes (``target_session_attrs``,
``read-write`` unless the DSN says otherwise), each host tried within ``connect_timeout``
(libpq's option, default 5 s); a pooled connection that dies is replaced on its next use,
one that finds its server read-only expires the whole pool, and LISTEN subscriptions come
back by themselves (``listen``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import asyncpg

from broker.exceptions import InvalidRequest, StorageUnavailable
from broker.server.storage import sql
from broker.server.storage.barrier import Barrier

#: NOTIFY channels, named here only. Tokens, policies, audit devices or the keyring changed
#: (other nodes drop their caches; the payload says which):
AUTH_CHANNEL = "broker_auth"
#: Mounts, connections or roles changed (other nodes drop their issue contexts):
CATALOG_CHANNEL = "broker_catalog"

#: Everything the driver raises. ``InternalClientError`` includes
#: ``TargetServerAttributeNotMatched``: every host answered but none takes writes (the
#: standby not yet promoted), which is storage being unavailable, not a bug.
DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
#: Per host, when the DSN sets no ``connect_timeout``: a host that does not answer (powered
#: off, partitioned away) must not hold up the next one for the OS's two-minute SYN timeout.
DEFAULT_CONNECT_TIMEOUT = 5.0
#: The broker writes on every request path: a DSN may ask for these only.
_WRITABLE_ATTRS = frozenset({"read-write", "primary", "any"})
#: libpq's defaults, for hosts given without a port.
_DEFAULT_PORT = 5432
#: At most one warning per this many seconds about failed connection attempts: during an
#: outage every request tries, and the log must stay readable.
_CONNECT_WARNING_EVERY = 5.0
#: TCP keepalive on every storage connection (idle seconds, probe interval, probes), and
#: how long sent data may stay unacknowledged: a primary that vanishes without closing its
#: connections (power lost, partitioned away) is noticed in seconds, not after the kernel's
#: two hours of idle or fifteen minutes of retransmissions. It matters most for the LISTEN
#: connections, which are idle by design and would otherwise wait on the dead host forever
#: while the other nodes NOTIFY the new primary.
_KEEPALIVE = (10, 3, 3)
_USER_TIMEOUT_MS = 20_000
#: A LISTEN whose connection died is re-established after this long, doubling while storage
#: stays away, up to the maximum (with jitter, so the nodes do not reconnect in step).
_RELISTEN_FIRST = 0.5
_RELISTEN_MAX = 5.0
_T = TypeVar("_T")
log = logging.getLogger(__name__)


def record(cls: type[_T], row: asyncpg.Record) -> _T:
    """A model from a row; array columns (lists) become the models' tuples."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}
    return cls(**values)


def rows_affected(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook. asyncpg's default runs a reset query (RESET ALL, UNLISTEN *, ...)
    on every release: a hidden round trip per query. The broker sets no session state and
    takes only transaction-scoped advisory locks, and asyncpg itself still rolls back an
    open transaction before calling this, so nothing needs resetting."""


@dataclass(frozen=True, slots=True)
class StorageAddress:
    """Where storage connections go: the hosts in the order to try them, and the options
    asyncpg does not take from a DSN the way libpq does.

    asyncpg tries a DSN's hosts one after the other under one overall timeout, so a first
    host that never answers would use it all up and the second would never be tried; and
    it sends unknown query parameters (libpq's ``connect_timeout``) to the server as
    settings, which refuses them. So the broker takes both out of the DSN and connects
    host by host itself."""

    dsn: str = ""  # the DSN without connect_timeout and target_session_attrs
    hosts: tuple[tuple[str, int], ...] = ()
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    target_session_attrs: str = "read-write"

    @classmethod
    def parse(cls, dsn: str) -> StorageAddress:
        parts = urllib.parse.urlsplit(dsn)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        options = dict(query)
        kept = [(k, v) for k, v in query if k not in ("connect_timeout", "target_session_attrs")]
        timeout = DEFAULT_CONNECT_TIMEOUT
        if options.get("connect_timeout"):
            timeout = float(options["connect_timeout"])
            if timeout <= 0:  # libpq: 0 waits forever; the broker never does
                timeout = DEFAULT_CONNECT_TIMEOUT
        attrs = options.get("target_session_attrs") or "read-write"
        if attrs not in _WRITABLE_ATTRS:
            raise ValueError(
                f"storage_dsn: target_session_attrs={attrs!r}: the broker writes to its "
                f"storage; use one of {', '.join(sorted(_WRITABLE_ATTRS))}"
            )
        hostspec = parts.netloc.rpartition("@")[2]
        hosts = _host_list(hostspec, options.get("port", ""))
        if not hosts and options.get("host"):
            hosts = _host_list(options["host"], options.get("port", ""))
        bare = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept)))
        return cls(bare, hosts, timeout, attrs)


def _host_list(spec: str, query_ports: str) -> tuple[tuple[str, int], ...]:
    """``h1:p1,[::1]:p2,h3`` as (host, port) pairs; a host without a port takes the
    matching entry of the ``port`` parameter (one for all, or one per host), else 5432."""
    ports = [p for p in query_ports.split(",") if p] if query_ports else []
    items = [x for x in spec.split(",") if x]
    if items and len(ports) > 1 and len(ports) != len(items):
        raise ValueError(
            f"storage_dsn: could not match {len(ports)} port numbers to {len(items)} hosts"
        )
    hosts: list[tuple[str, int]] = []
    for i, item in enumerate(items):
        if item.startswith("["):  # [v6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":")
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        else:
            host, port_text = item, ""
        if not port_text and ports:
            port_text = ports[i] if len(ports) > 1 else ports[0]
        if port_text and not (port_text.isascii() and port_text.isdigit()):
            # Never quoted: a password with an unencoded '/', '?' or '#' ends the host
            # part early, and its first piece then stands where a port would.
            raise ValueError(
                "storage_dsn: a port is not a number (a password with '@', '/', '?' or '#' "
                "in it must be percent-encoded)"
            )
        hosts.append((urllib.parse.unquote(host), int(port_text or _DEFAULT_PORT)))
    return tuple(hosts)


class _HostByHost:
    """The pool's ``connect``: each host in turn, each within the connect timeout, the
    first one that matches ``target_session_attrs`` wins (libpq's order and rules: a host
    that refuses, times out, is starting up or is read-only is skipped; a failed
    authentication is not, since the next host would refuse the same credentials).

    The host that last matched is tried first, the others after it in the DSN's order (as
    pgjdbc keeps its hosts' status): after a failover the dead first host would otherwise
    cost every new connection its whole connect timeout, for as long as it stays down."""

    def __init__(self, address: StorageAddress) -> None:
        self._address = address
        self._warned_at = 0.0
        #: Index in ``address.hosts`` of the host that last took a connection.
        self._last_good = 0

    async def __call__(self, *_dsn: Any, **kwargs: Any) -> asyncpg.Connection:
        """Called by the pool with its DSN (the one in ``StorageAddress``) and options."""
        address = self._address
        kwargs.pop("timeout", None)
        if not address.hosts:  # unix socket or PGHOST: asyncpg's own resolution
            conn: asyncpg.Connection = await asyncpg.connect(
                address.dsn,
                timeout=address.connect_timeout,
                target_session_attrs=address.target_session_attrs,
                **kwargs,
            )
            keep_alive(conn)
            return conn
        failures: list[str] = []
        last: BaseException | None = None
        order = sorted(range(len(address.hosts)), key=lambda i: i != self._last_good)
        for index in order:
            host, port = address.hosts[index]
            try:
                conn = await asyncpg.connect(
                    address.dsn,
                    host=host,
                    port=port,
                    timeout=address.connect_timeout,
                    target_session_attrs=address.target_session_attrs,
                    **kwargs,
                )
                keep_alive(conn)
                self._last_good = index
                return conn
            except asyncpg.InvalidAuthorizationSpecificationError:
                raise
            except DRIVER_ERRORS as exc:
                last = exc
                failures.append(f"{host}:{port} {_reason(exc)}")
        self._warn(failures)
        # Host names and ports stay in the log: an answer must not map the storage.
        if len(address.hosts) > 1:
            raise StorageUnavailable(
                f"storage unavailable: no writable server among its {len(address.hosts)} hosts"
            ) from last
        raise StorageUnavailable(f"storage unavailable: {_reason(last)}") from last

    def _warn(self, failures: list[str]) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _CONNECT_WARNING_EVERY:
            self._warned_at = now
            log.warning("no writable storage server: %s", "; ".join(failures))


def keep_alive(conn: asyncpg.Connection) -> None:
    """Keepalive and a user timeout on the connection's TCP socket (Linux names; where
    the platform lacks one, that option is left alone). Unix sockets have no peer to lose."""
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle, interval, count = _KEEPALIVE
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", count),
        ("TCP_USER_TIMEOUT", _USER_TIMEOUT_MS),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, asyncpg.TargetServerAttributeNotMatched):
        return "read-only (a standby)"
    return _described(exc) if exc is not None else "no host"


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """The storage pool over every host of ``dsn`` (see ``StorageAddress``)."""
    try:
        address = StorageAddress.parse(dsn)
    except ValueError as exc:
        raise StorageUnavailable(str(exc)) from None
    try:
        pool = await asyncpg.create_pool(
            address.dsn,
            min_size=min_size,
            max_size=max_size,
            connect=_HostByHost(address),
            init=_init_connection,
            reset=_keep_session,
            command_timeout=30,
            server_settings={"application_name": "broker"},
        )
    except DRIVER_ERRORS as exc:
        raise StorageUnavailable(f"cannot connect to storage: {type(exc).__name__}") from exc
    assert pool is not None
    return pool


def _described(exc: BaseException) -> str:
    """The error's kind, SQLSTATE and constraint name: enough to diagnose, no data."""
    parts = [type(exc).__name__]
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        parts.append(f"SQLSTATE {sqlstate}")
    constraint = getattr(exc, "constraint_name", None)
    if constraint:
        parts.append(f"constraint {constraint}")
    return ", ".join(parts)


class Connector:
    """The pool and the barrier every store shares (one of each per process).

    Each method is one round trip on a pooled connection; ``transaction`` and ``session``
    hold one connection for several statements.
    """

    def __init__(self, pool: asyncpg.Pool, barrier: Barrier | None = None) -> None:
        self._pool = pool
        self._q = sql.queries("connector")
        self.barrier = barrier if barrier is not None else Barrier()
        self._subscriptions: set[_Subscription] = set()

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    @asynccontextmanager
    async def translate(self) -> AsyncIterator[None]:
        """Driver errors inside become the broker's: bad input is the caller's, the rest
        is storage being unavailable. Never with the driver's message: PostgreSQL quotes
        the offending values there (``Key (mount, role_id)=(approle, <another role's
        id>)``), and an answer, a log line or an audit entry must not carry them."""
        try:
            yield
        except asyncpg.ReadOnlySQLTransactionError as exc:
            # 25006: the server no longer takes writes (an old primary back as a standby,
            # or default_transaction_read_only turned on). The pool's other connections
            # are most likely to it too: retire them all, so the next ones go through
            # the host-by-host search for a writable server.
            await self._retire_connections()
            raise StorageUnavailable("storage is read-only") from exc
        except asyncpg.DataError as exc:
            # Class 22 (invalid text, out of range, bad encoding): the input, not storage.
            raise InvalidRequest(f"invalid input ({_described(exc)})") from exc
        except asyncpg.IntegrityConstraintViolationError as exc:
            # Class 23: the write collides with what is stored (a unique key in use).
            raise InvalidRequest(
                f"the value conflicts with an existing entry ({_described(exc)})"
            ) from exc
        except DRIVER_ERRORS as exc:
            raise StorageUnavailable(f"storage error: {_described(exc)}") from exc

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.translate():
            rows: list[asyncpg.Record] = await self._pool.fetch(query, *args)
            return rows

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.translate():
            return await self._pool.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.translate():
            return await self._pool.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self.translate():
            status: str = await self._pool.execute(query, *args)
            return status

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """One connection inside one transaction, committed when the block ends."""
        async with self.translate(), self._pool.acquire() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def session(self) -> AsyncIterator[asyncpg.Connection]:
        """One connection without a transaction (session locks, COPY)."""
        async with self.translate(), self._pool.acquire() as conn:
            yield conn

    async def ping(self) -> None:
        await self.fetchval(self._q["ping"])

    async def writable(self) -> bool:
        """Whether storage takes writes now (a primary, not in recovery, not read-only);
        unreachable raises ``StorageUnavailable``. Read-only retires the pool's
        connections, as a refused write does."""
        if await self.fetchval(self._q["writable"]):
            return True
        await self._retire_connections()
        return False

    async def _retire_connections(self) -> None:
        """Storage turned read-only under open connections: every pooled connection is
        replaced on its next use, and each LISTEN moves (and re-subscribes) at once, since
        the nodes that write now NOTIFY on the server that took over."""
        await self._pool.expire_connections()
        for subscription in list(self._subscriptions):
            subscription.retire()

    async def notify(self, channel: str, payload: str = "") -> None:
        await self.fetchval(self._q["notify"], channel, payload)

    async def listen(
        self,
        channel: str,
        on_message: Callable[[], None],
        on_lost: Callable[[], None],
        on_restored: Callable[[], None] | None = None,
    ) -> Callable[[], Awaitable[None]]:
        """LISTEN on ``channel`` on a pooled connection held for the purpose, for as long
        as the returned coroutine function (stop listening; call it before the pool
        closes) is not called.

        If that connection dies (storage restarted or failed over), ``on_lost`` runs at
        once and the subscription is made again by itself, retried with backoff until
        storage answers; then ``on_restored`` runs (default: ``on_message``), since
        whatever was notified meanwhile was missed. The first LISTEN must succeed: a
        failure raises ``StorageUnavailable``."""
        subscription = _Subscription(
            self._pool, channel, on_message, on_lost, on_restored or on_message
        )
        async with self.translate():
            await subscription.subscribe()
        self._subscriptions.add(subscription)

        async def stop() -> None:
            self._subscriptions.discard(subscription)
            await subscription.stop()

        return stop


class _Subscription:
    """One LISTEN that outlives its connection (see ``Connector.listen``)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        channel: str,
        on_message: Callable[[], None],
        on_lost: Callable[[], None],
        on_restored: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._channel = channel
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_restored = on_restored
        self._conn: asyncpg.Connection | None = None
        self._stopped = False
        # The event loop keeps only weak references to tasks: hold the re-subscriber.
        self._resubscribing: asyncio.Task[None] | None = None

    def _callback(self, *_: object) -> None:
        self._on_message()

    async def subscribe(self) -> None:
        conn = await self._pool.acquire()
        try:
            await conn.add_listener(self._channel, self._callback)
        except BaseException:
            with contextlib.suppress(*DRIVER_ERRORS):
                await self._pool.release(conn)
            raise
        self._conn = conn
        conn.add_termination_listener(self._terminated)

    def retire(self) -> None:
        """Drop the connection (its server went read-only): re-subscribe elsewhere."""
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(*DRIVER_ERRORS):
                conn.terminate()  # runs _terminated

    def _terminated(self, dead: object) -> None:
        if self._stopped or self._conn is None:
            return
        conn, self._conn = self._conn, None
        log.warning("LISTEN %s lost its storage connection; subscribing again", self._channel)
        self._on_lost()
        self._resubscribing = asyncio.get_running_loop().create_task(self._resubscribe(conn))

    async def _resubscribe(self, dead: asyncpg.Connection) -> None:
        with contextlib.suppress(*DRIVER_ERRORS):
            await self._pool.release(dead)  # the pool replaces it
        delay = _RELISTEN_FIRST
        while not self._stopped:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            try:
                await self.subscribe()
            except (*DRIVER_ERRORS, StorageUnavailable):
                delay = min(delay * 2, _RELISTEN_MAX)
                continue
            if self._stopped:  # stop() ran while this LISTEN was being made
                await self._release()
                return
            log.info("LISTEN %s subscribed again", self._channel)
            self._on_restored()
            return

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(*DRIVER_ERRORS):
            conn.remove_termination_listener(self._terminated)
            if not conn.is_closed():
                await conn.remove_listener(self._channel, self._callback)  # UNLISTENs
        with contextlib.suppress(*DRIVER_ERRORS):
            await self._pool.release(conn)

    async def stop(self) -> None:
        self._stopped = True
        task, self._resubscribing = self._resubscribing, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._release()


class Store:
    """Base of the stores: the named queries of one SQL file (``QUERY_FILE``), run through
    the shared connector."""

    QUERY_FILE: ClassVar[str]

    def __init__(self, connector: Connector) -> None:
        self._db = connector
        self._q = sql.queries(self.QUERY_FILE)

    @property
    def barrier(self) -> Barrier:
        """The process's barrier: sealed or not, and the HMAC keys of tokens and audit."""
        return self._db.barrier

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        return await self._db.fetch(self._q[name], *args)

    async def _fetchrow(self, name: str, *args: Any) -> asyncpg.Record | None:
        return await self._db.fetchrow(self._q[name], *args)

    async def _fetchval(self, name: str, *args: Any) -> Any:
        return await self._db.fetchval(self._q[name], *args)

    async def _execute(self, name: str, *args: Any) -> str:
        return await self._db.execute(self._q[name], *args)

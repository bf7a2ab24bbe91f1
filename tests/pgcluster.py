"""Storage PostgreSQL the way production runs it, on loopback: a primary, streaming
standbys made with ``pg_basebackup -R``, synchronous replication switched on and off, an
abrupt stop of the primary and the promotion of a standby; plus the backups of the
disaster-recovery drill (``pg_dump -Fc``, a base backup with its WAL archive).

The servers run as ``nobody`` when the tests run as root (PostgreSQL refuses root), on
binaries that user can reach, exactly as the suite's password-checking cluster does
(``broker.server.storage.embedded``). Every server checks passwords (scram-sha-256), also
for replication. ``fsync`` is off: the tests kill server processes, never the machine, so
the operating system's page cache survives every "crash" here and durability on disk is
not what is being tested; replication is. Measurements of backup and restore times turn it
on (``durable=True``), as production runs.

Every method that runs a program is a coroutine: the brokers under test usually share the
test's event loop, and a blocking ``pg_ctl`` would stall them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from broker.server.secrets_gen import generate_password
from broker.server.storage.embedded import find_bin_dir, free_port

SUPERUSER = "postgres"


def _append(path: Path, text: str) -> None:
    """Add settings to a server's configuration file (small, local: no thread needed)."""
    with open(path, "a") as conf:
        conf.write(text)


@dataclass
class Tools:
    """The binaries, and the user every server and tool runs as."""

    bin_dir: Path = field(default_factory=lambda: find_bin_dir(need_world_access=os.geteuid() == 0))
    run_as: pwd.struct_passwd | None = field(
        default_factory=lambda: pwd.getpwnam("nobody") if os.geteuid() == 0 else None
    )

    def own(self, path: Path) -> None:
        """Make ``path`` the server user's (a directory it creates data in)."""
        if self.run_as is not None:
            os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)

    async def run(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> str:
        """``bin_dir/args[0] args[1:]`` as the server user; stdout, or RuntimeError."""
        kwargs: dict[str, object] = {}
        if self.run_as is not None:
            kwargs = {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}
        full_env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", **(env or {})}

        def call() -> subprocess.CompletedProcess[str]:
            done: subprocess.CompletedProcess[str] = subprocess.run(
                [str(self.bin_dir / args[0]), *args[1:]],
                capture_output=True,
                text=True,
                cwd=cwd or "/",
                env=full_env,
                check=False,
                **kwargs,  # type: ignore[call-overload]
            )
            return done

        result = await asyncio.to_thread(call)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stderr.strip() or result.stdout}")
        return result.stdout


@dataclass
class Server:
    """One postmaster, primary or standby, in its own data directory and port."""

    name: str
    data: Path
    port: int
    password: str
    tools: Tools
    durable: bool = False
    running: bool = False

    @property
    def log_file(self) -> Path:
        return self.data.parent / f"{self.name}.log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    async def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.data.parent} -c max_connections=200 "
            f"-c fsync={'on' if self.durable else 'off'} "
            f"-c full_page_writes={'on' if self.durable else 'off'} -c wal_level=replica "
            "-c max_wal_senders=10 -c wal_keep_size=256MB -c hot_standby=on "
            "-c wal_sender_timeout=5s -c wal_receiver_status_interval=1s"
        )
        await self.tools.run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log_file), "-o", options, "-w", "start"
        )
        self.running = True

    async def stop(self, mode: str = "fast") -> None:
        """``immediate``: the abrupt stop of a crash (no checkpoint, connections cut)."""
        if self.running:
            with contextlib.suppress(RuntimeError):
                await self.tools.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
            self.running = False

    async def promote(self) -> None:
        await self.tools.run("pg_ctl", "-D", str(self.data), "-w", "promote")

    async def sql(self, query: str, *args: object, database: str = "postgres") -> object:
        conn = await asyncpg.connect(self.dsn(database))
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    async def in_recovery(self) -> bool:
        return bool(await self.sql("SELECT pg_is_in_recovery()"))


class ReplicatedStorage:
    """A primary and its standbys in one temporary directory; ``close()`` stops every
    server and removes it all. ``archive``: every WAL segment the primary finishes is
    copied to ``archive_dir`` (point-in-time recovery from a base backup)."""

    def __init__(self, *, archive: bool = False, durable: bool = False) -> None:
        self.tools = Tools()
        self.durable = durable
        self.password = generate_password()
        self.root = Path(tempfile.mkdtemp(prefix="broker-pgcluster-"))
        self.root.chmod(0o700)
        self.tools.own(self.root)
        self.archive_dir = self.root / "wal-archive"
        self._archive = archive
        self.servers: list[Server] = []
        self.primary: Server | None = None

    # -- building ---------------------------------------------------------------------------

    async def start_primary(self) -> Server:
        data = self.root / "primary"
        await self._initdb(data)
        if self._archive:
            self.archive_dir.mkdir()
            self.tools.own(self.archive_dir)
            _append(
                data / "postgresql.conf",
                "archive_mode = on\n"
                f"archive_command = 'test ! -f {self.archive_dir}/%f && "
                f"cp %p {self.archive_dir}/%f'\n",
            )
        server = await self._started(
            Server("primary", data, 0, self.password, self.tools, self.durable)
        )
        self.primary = server
        return server

    async def add_standby(self) -> Server:
        """A streaming standby of the current primary (``pg_basebackup -R``)."""
        primary = self._need_primary()
        name = f"standby{len(self.servers)}"
        data = self.root / name
        await self.tools.run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            SUPERUSER,
            "-D",
            str(data),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            env={"PGPASSWORD": self.password, "PGAPPNAME": name},
            cwd=self.root,
        )
        # Its name on the primary (pg_stat_replication.application_name), and no
        # archiving of its own until it is promoted.
        _append(data / "postgresql.auto.conf", f"cluster_name = '{name}'\narchive_mode = off\n")
        return await self._started(Server(name, data, 0, self.password, self.tools, self.durable))

    async def _initdb(self, data: Path) -> None:
        """A new, empty data directory whose superuser logs in with the password."""
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        self.tools.own(pwfile)
        try:
            await self.tools.run(
                "initdb",
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C",
                cwd=self.root,
            )
        finally:
            pwfile.unlink()

    async def _started(self, server: Server) -> Server:
        for attempt in range(5):
            server.port = free_port()
            try:
                await server.start()
                break
            except RuntimeError:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2)
        self.servers.append(server)
        return server

    def _need_primary(self) -> Server:
        if self.primary is None:
            raise RuntimeError("no primary")
        return self.primary

    # -- replication ------------------------------------------------------------------------

    @property
    def standbys(self) -> list[Server]:
        return [s for s in self.servers if s is not self.primary and s.running]

    async def set_synchronous(self, on: bool) -> None:
        """``synchronous_standby_names = '*'`` (a commit returns once a standby has
        flushed it) or ``''`` (asynchronous), then wait until the primary says so."""
        primary = self._need_primary()
        await primary.sql(f"ALTER SYSTEM SET synchronous_standby_names = '{'*' if on else ''}'")
        await primary.sql("SELECT pg_reload_conf()")
        wanted = "sync" if on else "async"
        deadline = time.monotonic() + 30
        while True:
            state = await primary.sql("SELECT string_agg(sync_state, ',') FROM pg_stat_replication")
            if state and wanted in str(state).split(","):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replication is {state!r}, wanted {wanted}")
            await asyncio.sleep(0.1)

    async def wait_streaming(self, within: float = 30) -> None:
        """Until every running standby streams from the primary."""
        primary = self._need_primary()
        deadline = time.monotonic() + within
        while True:
            streaming = await primary.sql(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
            )
            if streaming == len(self.standbys):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{streaming} of {len(self.standbys)} standbys streaming")
            await asyncio.sleep(0.1)

    async def replay_lag_bytes(self) -> int:
        """How far the slowest standby's replay is behind the primary's WAL."""
        value = await self._need_primary().sql(
            "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0)"
            "::bigint FROM pg_stat_replication"
        )
        return int(str(value))

    async def detach(self, standby: Server) -> None:
        """Cut ``standby`` off its primary (no ``primary_conninfo``, reloaded: the WAL
        receiver stops), as a network partition would: whatever the primary commits from
        now on exists on the primary only."""
        conf = standby.data / "postgresql.auto.conf"
        lines = [x for x in conf.read_text().splitlines() if not x.startswith("primary_conninfo")]
        conf.write_text("\n".join(lines) + "\n")
        await self.tools.run("pg_ctl", "-D", str(standby.data), "reload")
        deadline = time.monotonic() + 30
        while int(str(await standby.sql("SELECT count(*) FROM pg_stat_wal_receiver"))):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{standby.name} still receives WAL")
            await asyncio.sleep(0.05)

    async def crash_primary(self) -> Server:
        """Stop the primary abruptly (``pg_ctl stop -m immediate``): its connections are
        cut, nothing is checkpointed, and no standby hears of it. Returns the dead one."""
        primary = self._need_primary()
        await primary.stop("immediate")
        return primary

    async def promote(self, standby: Server | None = None) -> Server:
        """Promote ``standby`` (default: the first running one); it is the primary now."""
        chosen = standby or self.standbys[0]
        await chosen.promote()
        deadline = time.monotonic() + 30
        while await chosen.in_recovery():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{chosen.name} still in recovery")
            await asyncio.sleep(0.05)
        self.primary = chosen
        return chosen

    def dsn(self, database: str = "postgres", *, servers: list[Server] | None = None) -> str:
        """One DSN naming every server (or ``servers``), in order, for a broker that
        must find the writable one: ``host1:port1,host2:port2`` and
        ``target_session_attrs=read-write``."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in (servers or self.servers))
        return (
            f"postgresql://{SUPERUSER}:{self.password}@{hosts}/{database}"
            "?target_session_attrs=read-write&connect_timeout=2"
        )

    # -- backups (the disaster-recovery drill) ----------------------------------------------

    async def dump(self, database: str, target: Path) -> None:
        """``pg_dump -Fc`` of ``database`` from the primary into ``target``."""
        primary = self._need_primary()
        await self.tools.run(
            "pg_dump",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            SUPERUSER,
            "-Fc",
            "-f",
            str(target),
            database,
            env={"PGPASSWORD": self.password},
            cwd=self.root,
        )

    async def base_backup(self, target: Path) -> None:
        """``pg_basebackup`` of the primary (plain format, WAL included) into ``target``:
        with the WAL archive, what a point-in-time recovery starts from."""
        primary = self._need_primary()
        await self.tools.run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            SUPERUSER,
            "-D",
            str(target),
            "-X",
            "stream",
            "-c",
            "fast",
            env={"PGPASSWORD": self.password},
            cwd=self.root,
        )

    async def switch_wal(self) -> str:
        """Close the current WAL segment so it is archived now (archive_timeout would), and
        name it. Named from ``pg_switch_wal()``'s own answer (the end of the segment it
        closed, which ``pg_walfile_name`` maps to that segment), not from the write position
        read after: a broker node writes all the time, so that position may already be in
        the next segment, which nobody archives until it too is switched."""
        return str(await self._need_primary().sql("SELECT pg_walfile_name(pg_switch_wal())"))

    async def wait_archived(self, segment: str, within: float = 30) -> None:
        """Until ``segment`` (``switch_wal``'s answer: everything committed before it) is in
        the archive."""
        archived = self.archive_dir / segment
        deadline = time.monotonic() + within
        while not archived.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"WAL segment {segment} not archived")
            await asyncio.sleep(0.1)

    async def restore_base_backup(self, backup: Path, *, recovery_target_time: str = "") -> Server:
        """A new primary from a base backup, replaying the WAL archive (to
        ``recovery_target_time`` if given, else to its end) then promoted."""
        name = f"restored{len(self.servers)}"
        data = self.root / name
        shutil.copytree(backup, data, symlinks=True)
        for path in [data, *data.rglob("*")]:
            if self.tools.run_as is not None and not path.is_symlink():
                os.chown(path, self.tools.run_as.pw_uid, self.tools.run_as.pw_gid)
        data.chmod(0o700)
        settings = f"restore_command = 'cp {self.archive_dir}/%f %p'\narchive_mode = off\n"
        if recovery_target_time:
            settings += (
                f"recovery_target_time = '{recovery_target_time}'\n"
                "recovery_target_action = 'promote'\n"
            )
        _append(data / "postgresql.auto.conf", settings)
        (data / "recovery.signal").touch()
        self.tools.own(data / "recovery.signal")
        server = await self._started(Server(name, data, 0, self.password, self.tools, self.durable))
        deadline = time.monotonic() + 60
        while await server.in_recovery():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not finish recovery")
            await asyncio.sleep(0.1)
        self.primary = server
        return server

    async def new_empty_primary(self) -> Server:
        """A fresh cluster beside the others (the machine that replaces a lost one)."""
        name = f"fresh{len(self.servers)}"
        data = self.root / name
        await self._initdb(data)
        server = await self._started(Server(name, data, 0, self.password, self.tools, self.durable))
        self.primary = server
        return server

    async def restore_dump(self, dump: Path, database: str, jobs: int = 2) -> None:
        """``createdb`` then ``pg_restore`` of a ``pg_dump -Fc`` file into the primary."""
        primary = self._need_primary()
        await primary.sql(f'CREATE DATABASE "{database}"')
        await self.tools.run(
            "pg_restore",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            SUPERUSER,
            "-d",
            database,
            "-j",
            str(jobs),
            "--no-owner",
            str(dump),
            env={"PGPASSWORD": self.password},
            cwd=self.root,
        )

    async def lose(self, server: Server) -> None:
        """The machine is gone: the server stops abruptly and its data directory with it."""
        await server.stop("immediate")
        shutil.rmtree(server.data, ignore_errors=True)
        if server is self.primary:
            self.primary = None

    # -- cleanup ----------------------------------------------------------------------------

    async def close(self) -> None:
        await asyncio.gather(*(s.stop("immediate") for s in self.servers))
        shutil.rmtree(self.root, ignore_errors=True)

    def writable_dir(self, name: str) -> Path:
        """A directory inside the cluster's root that the server user may write to (for
        dumps and base backups made with its tools)."""
        path = self.root / name
        path.mkdir(exist_ok=True)
        self.tools.own(path)
        return path

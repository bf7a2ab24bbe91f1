"""Plugin names, and one live engine (with its pool) per configured connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from broker.exceptions import InvalidRequest
from broker.models import Connection
from broker.server.engines.base import ConnectionConfig, DatabaseEngine
from broker.server.engines.mysql import MySQLEngine
from broker.server.engines.postgres import PostgresEngine

EngineFactory = Callable[[ConnectionConfig], DatabaseEngine]

PLUGINS: dict[str, EngineFactory] = {
    "postgresql-database-plugin": PostgresEngine,
    "mysql-database-plugin": MySQLEngine,
    "mysql-aurora-database-plugin": MySQLEngine,
    "mysql-rds-database-plugin": MySQLEngine,
    "mariadb-database-plugin": MySQLEngine,
    "mysql-legacy-database-plugin": lambda config: MySQLEngine(config, username_limit=16),
}


def check_plugin_name(plugin_name: str) -> None:
    if plugin_name not in PLUGINS:
        raise InvalidRequest(
            f"unsupported plugin_name {plugin_name!r}; supported: {', '.join(sorted(PLUGINS))}"
        )


def build_engine(connection: Connection, install_id: str = "") -> DatabaseEngine:
    """``install_id``: the mark of this install that the engine puts on each user it
    creates (only the registry's engines create users)."""
    check_plugin_name(connection.plugin_name)
    config = ConnectionConfig(
        connection_url=connection.connection_url,
        username=connection.username,
        password=connection.password,
        options=dict(connection.options),
        install_id=install_id,
    )
    return PLUGINS[connection.plugin_name](config)


class EngineRegistry:
    """Caches an engine per (mount, connection name), rebuilt when the stored connection's
    version changes (another node, or this one, rewrote it)."""

    def __init__(self, install_id: str = "") -> None:
        #: This install's id, marked on every user the engines create: set once storage is
        #: open (``NodeStore.install_id``), before any engine is built.
        self.install_id = install_id
        self._engines: dict[tuple[str, str], tuple[int, DatabaseEngine]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, connection: Connection) -> DatabaseEngine:
        key = (connection.mount, connection.name)
        cached = self._engines.get(key)
        if cached is not None and cached[0] == connection.version:
            return cached[1]
        engine = build_engine(connection, self.install_id)
        self._engines[key] = (connection.version, engine)
        if cached is not None:
            self._close_later(cached[1])
        return engine

    def pool_stats(self) -> list[tuple[str, str, dict[str, int]]]:
        """(mount, connection, stats) for every engine this node has built."""
        return [(m, n, engine.pool_stats()) for (m, n), (_, engine) in self._engines.items()]

    def forget(self, mount: str, name: str | None = None) -> None:
        for key in [k for k in self._engines if k[0] == mount and name in (None, k[1])]:
            self._close_later(self._engines.pop(key)[1])

    def forget_all(self) -> None:
        """On seal: no pool keeps a target password alive in this process."""
        for key in list(self._engines):
            self._close_later(self._engines.pop(key)[1])

    def _close_later(self, engine: DatabaseEngine) -> None:
        task = asyncio.get_running_loop().create_task(engine.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        engines = [engine for _, engine in self._engines.values()]
        self._engines.clear()
        await asyncio.gather(*(e.close() for e in engines), *self._closing, return_exceptions=True)

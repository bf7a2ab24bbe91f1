from __future__ import annotations

import pytest

from broker.durations import parse_duration
from broker.exceptions import InvalidRequest
from broker.server.engines.base import ConnectionConfig
from broker.server.engines.mysql import connect_arguments as mysql_args
from broker.server.engines.postgres import connect_arguments as pg_args


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (3600, 3600),
        ("3600", 3600),
        ("1h30m", 5400),
        ("90s", 90),
        ("2d", 172800),
        ("1.5h", 5400),
        ("500ms", 0),
        (0, 0),
    ],
)
def test_durations(value: object, seconds: int) -> None:
    assert parse_duration(value, "ttl") == seconds


@pytest.mark.parametrize("value", ["ten", "1x", "h1", "", "-5", True, [1], "1h 30m"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(InvalidRequest, match="ttl"):
        parse_duration(value, "ttl")


def test_postgres_url_with_hostile_password_cannot_move_the_connection() -> None:
    config = ConnectionConfig(
        "postgresql://{{username}}:{{password}}@db.internal:6432/app?sslmode=disable",
        "admin",
        "p@ss:w/rd?host=evil",
    )
    args = pg_args(config)
    assert args == {
        "host": "db.internal",
        "port": 6432,
        "database": "app",
        "user": "admin",
        "password": "p@ss:w/rd?host=evil",
        "ssl": None,
    }


def test_postgres_key_value_string() -> None:
    config = ConnectionConfig(
        "host=127.0.0.1 port=5433 dbname='my db' user={{username}} password={{password}}",
        "u",
        "secret",
    )
    assert pg_args(config) == {
        "host": "127.0.0.1",
        "port": 5433,
        "database": "my db",
        "user": "u",
        "password": "secret",
    }


def test_mysql_go_dsn_and_url() -> None:
    config = ConnectionConfig(
        "{{username}}:{{password}}@tcp(10.0.0.5:3307)/app?tls=false", "root", "p@ss:word)"
    )
    args = mysql_args(config)
    assert (args["host"], args["port"], args["db"], args["user"], args["password"]) == (
        "10.0.0.5",
        3307,
        "app",
        "root",
        "p@ss:word)",
    )
    assert (
        mysql_args(ConnectionConfig("{{username}}:{{password}}@unix(/run/my.sock)/", "r", ""))[
            "unix_socket"
        ]
        == "/run/my.sock"
    )
    url = mysql_args(ConnectionConfig("mysql://{{username}}:{{password}}@h:1/d", "u", "p"))
    assert (url["host"], url["port"], url["db"]) == ("h", 1, "d")
    with pytest.raises(InvalidRequest):
        mysql_args(ConnectionConfig("not a dsn", "u", "p"))

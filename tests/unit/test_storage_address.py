"""How a storage DSN becomes the hosts the broker tries, one by one (connector.py)."""

from __future__ import annotations

import pytest

from broker.server.storage.connector import DEFAULT_CONNECT_TIMEOUT, StorageAddress


def test_multi_host_dsn_in_order_with_libpq_options_taken_out() -> None:
    address = StorageAddress.parse(
        "postgresql://u:p%40ss@10.0.0.1:5433,db2.internal,[::1]:6000/broker"
        "?target_session_attrs=read-write&connect_timeout=2&sslmode=disable"
    )
    assert address.hosts == (("10.0.0.1", 5433), ("db2.internal", 5432), ("::1", 6000))
    assert address.connect_timeout == 2.0
    assert address.target_session_attrs == "read-write"
    # asyncpg would send unknown parameters to the server as settings: both are gone, the
    # rest (credentials, database, sslmode) is kept as written.
    assert address.dsn == (
        "postgresql://u:p%40ss@10.0.0.1:5433,db2.internal,[::1]:6000/broker?sslmode=disable"
    )


def test_defaults_a_writable_server_and_a_bounded_connect() -> None:
    address = StorageAddress.parse("postgresql://u@127.0.0.1/broker")
    assert address.hosts == (("127.0.0.1", 5432),)
    assert address.target_session_attrs == "read-write"
    assert address.connect_timeout == DEFAULT_CONNECT_TIMEOUT
    # libpq's connect_timeout=0 waits forever; a node must not.
    zero = StorageAddress.parse("postgresql://u@h/db?connect_timeout=0")
    assert zero.connect_timeout == DEFAULT_CONNECT_TIMEOUT


def test_hosts_and_ports_from_the_query() -> None:
    address = StorageAddress.parse("postgresql://u@/broker?host=a,b&port=5433,5434")
    assert address.hosts == (("a", 5433), ("b", 5434))
    one_port = StorageAddress.parse("postgresql://u@a,b/broker?port=6432")
    assert one_port.hosts == (("a", 6432), ("b", 6432))
    socket = StorageAddress.parse("postgresql://u@%2Fvar%2Frun%2Fpostgresql/broker")
    assert socket.hosts == (("/var/run/postgresql", 5432),)


@pytest.mark.parametrize("attrs", ["standby", "read-only", "prefer-standby"])
def test_refuses_a_read_only_target(attrs: str) -> None:
    with pytest.raises(ValueError, match="writes to its storage"):
        StorageAddress.parse(f"postgresql://u@h/db?target_session_attrs={attrs}")


def test_a_malformed_dsn_is_refused_without_quoting_it() -> None:
    """A password with an unencoded '/' ends the host part there, so what follows the
    user's colon reads as a port: the refusal names the mistake, never that text (a piece
    of the password), in its message or in a chained exception."""
    with pytest.raises(ValueError) as refused:
        StorageAddress.parse("postgresql://broker:s3cr/et@db.internal/broker")
    assert "s3cr" not in str(refused.value) and "percent-encoded" in str(refused.value)
    assert refused.value.__cause__ is None and refused.value.__context__ is None


def test_a_port_list_must_match_the_hosts() -> None:
    """libpq's rule: one port for every host, or one per host (not an IndexError)."""
    with pytest.raises(ValueError, match="2 port numbers to 3 hosts"):
        StorageAddress.parse("postgresql://u@a,b,c/broker?port=5433,5434")
    with pytest.raises(ValueError, match="2 port numbers to 3 hosts"):
        StorageAddress.parse("postgresql://u@/broker?host=a,b,c&port=5433,5434")

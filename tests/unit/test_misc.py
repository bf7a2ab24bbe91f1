from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker.server.database.revocation import backoff_seconds
from broker.server.redaction import REDACTED, redact
from broker.server.secrets_gen import generate_password, lease_suffix
from broker.server.settings import Settings
from broker.server.storage import sql


def test_every_query_block_parses_and_is_used() -> None:
    """Each ``sql/<file>.sql`` belongs to ``storage/<file>.py``: every block is run by that
    module, by name, and no module names another file's block (block names are unique
    across files, which ``all_queries`` checks)."""
    by_file = sql.all_queries()
    assert set(by_file) == set(sql.QUERY_FILES)
    storage = Path("broker/server/storage")
    sources = {file: (storage / f"{file}.py").read_text() for file in by_file}
    for file, queries in by_file.items():
        assert queries, f"{file}.sql has no queries"
        for name in queries:
            assert f'"{name}"' in sources[file], f"query {name} of {file}.sql is never used"
            others = [other for other, source in sources.items() if other != file]
            assert not [o for o in others if f'"{name}"' in sources[o]], (
                f"query {name} of {file}.sql is run outside storage/{file}.py"
            )
    with pytest.raises(ValueError, match="twice"):
        sql.parse_blocks("-- a --\nSELECT 1\n-- a --\nSELECT 2")


def test_each_store_reads_its_own_query_file() -> None:
    from broker.server.storage import stores
    from broker.server.storage.connector import Store

    assert len(Store.__subclasses__()) == len(stores.Stores.__dataclass_fields__) - 1
    for cls in Store.__subclasses__():
        module = cls.__module__.rsplit(".", 1)[-1]
        assert module == cls.QUERY_FILE, f"{cls.__name__} reads {cls.QUERY_FILE}.sql"


def test_migrations_are_numbered() -> None:
    versions = [version for version, _ in sql.migrations()]
    assert versions == sorted(versions) and versions[0].startswith("0001_")


def test_passwords_and_lease_ids() -> None:
    passwords = {generate_password() for _ in range(100)}
    assert len(passwords) == 100
    for password in passwords:
        assert len(password) >= 20 and re.fullmatch(r"[A-Za-z0-9]+", password)
    assert re.fullmatch(r"[A-Za-z0-9]{24}", lease_suffix())


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    assert 0.5 <= backoff_seconds(1) <= 1
    assert 4 <= backoff_seconds(4) <= 8
    assert 30 <= backoff_seconds(60) <= 60
    assert 150 <= backoff_seconds(60, cap=300) <= 300


def test_redact_whole_secrets_and_truncated_fragments() -> None:
    assert redact("pw=abcdef and abcdefgh", ["abcdef", "abcdefgh"]) == (
        f"pw={REDACTED} and {REDACTED}"
    )
    assert redact("nothing", ["", "ab"]) == "nothing"
    password = "9rKorqbvJQv7rU1DnJTx4kPz0aQwErTy"
    quoted = "near 'IDENTIFIED BY '9rKorqbvJQv7rU1DnJT...' at line 1"
    assert redact(quoted, [password]) == f"near 'IDENTIFIED BY '{REDACTED}...' at line 1"
    assert redact("tail x4kPz0aQwErTy'", [password]) == f"tail {REDACTED}'"


def test_settings_file_then_environment(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(
        'storage_dsn = "postgresql://x/y"\nsweep_interval = 5\nmax_lease_ttl = "2h"\n'
    )
    settings = Settings.load(config, environ={"BROKER_SWEEP_INTERVAL": "0.5"})
    assert settings.storage_dsn == "postgresql://x/y"
    assert settings.sweep_interval == 0.5 and settings.max_lease_ttl == 7200
    assert "postgresql://x/y" not in repr(settings)
    config.write_text("nope = 1\n")
    with pytest.raises(ValueError, match="unknown settings: nope"):
        Settings.load(config, environ={})


def test_root_token_by_hash() -> None:
    import hashlib

    settings = Settings(root_token_sha256=hashlib.sha256(b"s3cret").hexdigest())
    assert settings.token_is_root("s3cret")
    assert not settings.token_is_root("other") and not settings.token_is_root("")

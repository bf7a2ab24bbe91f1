"""The broker's SQL, shipped inside the package: one file of named queries per store
(``leases.sql``, ``catalog.sql``...) and the numbered ``migrations/``. Kept beside this
module (as procrastinate keeps its SQL) so a wheel carries it: an installed broker reads
its SQL from where it was installed, never from a checkout."""

from __future__ import annotations

import functools
import re
from importlib.resources import files
from importlib.resources.abc import Traversable

_BLOCK_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)
_MIGRATION = re.compile(r"^[0-9]{4}_.+\.sql$")
#: Every file of named queries, by the name its module loads it under: block names are
#: unique across all of them, so a name says which query it is wherever it appears.
QUERY_FILES = (
    "connector",
    "migrations",
    "catalog",
    "leases",
    "nodes",
    "keyring",
    "auth",
    "audit",
    "declared",
)


def sql_dir() -> Traversable:
    """Where the SQL files are: this package, in a checkout or an installed wheel alike."""
    return files(__name__)


def parse_blocks(text: str) -> dict[str, str]:
    """Split a file of ``-- name --`` blocks into {name: statement}."""
    parts = _BLOCK_HEADER.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"query {name!r} is defined twice")
        statement = body.strip()
        if not statement:
            raise ValueError(f"query {name!r} is empty")
        blocks[name] = statement
    return blocks


@functools.cache
def queries(file: str) -> dict[str, str]:
    """The named blocks of ``<file>.sql`` (one of ``QUERY_FILES``)."""
    if file not in QUERY_FILES:
        raise ValueError(f"no query file {file!r}")
    return parse_blocks((sql_dir() / f"{file}.sql").read_text())


def all_queries() -> dict[str, dict[str, str]]:
    """{file: {name: statement}} for every query file, checking that no block name is
    defined in two files."""
    seen: dict[str, str] = {}
    for file in QUERY_FILES:
        for name in queries(file):
            if name in seen:
                raise ValueError(f"query {name!r} is defined in {seen[name]}.sql and {file}.sql")
            seen[name] = file
    return {file: queries(file) for file in QUERY_FILES}


def migrations() -> list[tuple[str, str]]:
    """(version, script) for each numbered migration, in order."""
    scripts = sorted(
        (entry for entry in (sql_dir() / "migrations").iterdir() if _MIGRATION.match(entry.name)),
        key=lambda entry: entry.name,
    )
    return [(entry.name.removesuffix(".sql"), entry.read_text()) for entry in scripts]

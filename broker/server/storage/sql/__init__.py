"""The broker's SQL, shipped inside the package: named queries in ``queries.sql`` and the
numbered ``migrations/``. Kept beside this module (as procrastinate keeps its SQL) so a
wheel carries it: an installed broker reads its SQL from where it was installed, never
from a checkout."""

from __future__ import annotations

import functools
import re
from importlib.resources import files
from importlib.resources.abc import Traversable

_BLOCK_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)
_MIGRATION = re.compile(r"^[0-9]{4}_.+\.sql$")


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
def queries() -> dict[str, str]:
    return parse_blocks((sql_dir() / "queries.sql").read_text())


def migrations() -> list[tuple[str, str]]:
    """(version, script) for each numbered migration, in order."""
    scripts = sorted(
        (entry for entry in (sql_dir() / "migrations").iterdir() if _MIGRATION.match(entry.name)),
        key=lambda entry: entry.name,
    )
    return [(entry.name.removesuffix(".sql"), entry.read_text()) for entry in scripts]

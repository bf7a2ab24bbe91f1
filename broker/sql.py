"""Loads the SQL that lives in ``sql/``: the one module that knows where it is."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

_CANDIDATES = (
    *((Path(os.environ["BROKER_SQL_DIR"]),) if os.environ.get("BROKER_SQL_DIR") else ()),
    Path(__file__).resolve().parent.parent / "sql",  # source checkout / editable install
    Path(__file__).resolve().parent / "_sql",  # wheel: sql/ copied into the package
)
_BLOCK_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def sql_dir() -> Path:
    for candidate in _CANDIDATES:
        if (candidate / "queries.sql").is_file():
            return Path(candidate)
    raise FileNotFoundError("the broker's sql/ directory is missing from this installation")


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
    files = sorted((sql_dir() / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))
    return [(path.stem, path.read_text()) for path in files]

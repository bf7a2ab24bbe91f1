from __future__ import annotations

from pathlib import Path

from broker.cli_reference import render

ROOT = Path(__file__).resolve().parents[2]


def test_cli_reference_is_current() -> None:
    """docs/cli.md is generated from the parser; regenerate with
    `python -m broker.cli_reference > docs/cli.md`."""
    assert (ROOT / "docs" / "cli.md").read_text() == render()


def test_every_subcommand_help_has_an_example() -> None:
    text = render()
    sections = text.split("\n## ")[1:]
    top_level = [s for s in sections if s.count(" ") >= 1 and s.split("`")[1].count(" ") == 1]
    missing = [s.split("`")[1] for s in top_level if "xample" not in s]
    assert not missing, missing

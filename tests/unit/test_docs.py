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


def test_every_command_help_has_an_example() -> None:
    import argparse

    from broker.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> list[tuple[str, str]]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append((" ".join([*path, name]), sub.format_help()))
                    found += walk(sub, [*path, name])
        return found

    commands = walk(build_parser(), [])
    assert len(commands) > 30
    assert [name for name, text in commands if "Example" not in text] == []

"""``broker completion bash``: a bash completion script made from the parser itself, so
it cannot drift from the commands."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description='Example: eval "$(broker completion bash)"',
    )
    completion.add_argument("shell", choices=("bash",))
    # The client may not import broker.cli (which builds the root parser), so the command
    # carries the root's table of commands; it is complete by the time anything runs.
    completion.set_defaults(all_commands=sub)


def run(args: argparse.Namespace) -> int:
    commands: dict[str, list[str]] = {}
    for name, parser in args.all_commands.choices.items():
        words = [o for a in parser._actions for o in a.option_strings]
        for inner in parser._actions:
            if isinstance(inner, argparse._SubParsersAction):
                words += list(inner.choices)
        commands[name] = words
    cases = "\n".join(
        f'        {name}) opts="{" ".join(words)}" ;;' for name, words in commands.items()
    )
    print(f"""# bash completion for broker: eval "$(broker completion bash)"
_broker() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{" ".join(commands)}" -- "$cur"))
        return
    fi
    local opts=""
    case "${{COMP_WORDS[1]}}" in
{cases}
    esac
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}}
complete -F _broker broker""")
    return 0

"""The ``listfilter`` console script.

Mail-side commands run once per message (Postfix's pipe spawns them), so they
are dispatched here with argparse from the standard library, before click or
anything heavy is imported. Every other command goes to :mod:`listfilter.cli`.
"""

from __future__ import annotations

import sys

#: command name -> "module:function" taking the parsed argparse namespace
MAIL_COMMANDS = {
    "deliver": "listfilter.deliver:main",
}


def command_of(argv: list[str]) -> str | None:
    """The subcommand name, skipping the global ``--config PATH`` option."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            i += 2
            continue
        if arg.startswith("--config="):
            i += 1
            continue
        return arg
    return None


def run_mail_command(argv: list[str]) -> int:
    import argparse
    import importlib

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            # A wrong master.cf line is the administrator's to fix: defer the
            # mail (EX_TEMPFAIL) rather than bounce it.
            self.exit(75, f"listfilter: usage error: {message}\n")

    parser = Parser(prog="listfilter")
    parser.add_argument("--config", metavar="PATH", default=None,
                        help="the list config (default: $LISTFILTER_CONFIG or /etc/listfilter/lists.toml)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, target in MAIL_COMMANDS.items():
        module, func = target.split(":")
        mod = importlib.import_module(module)
        mod.add_arguments(sub.add_parser(name, prog=f"listfilter {name}", help=mod.__doc__.strip().splitlines()[0],
                                         description=mod.__doc__.strip().splitlines()[0]))
    args = parser.parse_args(argv)
    module, func = MAIL_COMMANDS[args.command].split(":")
    return getattr(importlib.import_module(module), func)(args)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if command_of(argv) in MAIL_COMMANDS:
        sys.exit(run_mail_command(argv))
    from .cli import main as cli_main

    cli_main(argv)

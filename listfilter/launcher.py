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
    "policy": "listfilter.policy:main",
    "bounce": "listfilter.bounces:main",
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
    # only the command being run is imported (each is spawned per message or connection)
    name = command_of(argv)
    module, func = MAIL_COMMANDS[name].split(":")
    mod = importlib.import_module(module)
    summary = mod.__doc__.strip().splitlines()[0]
    mod.add_arguments(sub.add_parser(name, prog=f"listfilter {name}", help=summary, description=summary))
    args = parser.parse_args(argv)
    return getattr(mod, func)(args)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if command_of(argv) in MAIL_COMMANDS:
        sys.exit(run_mail_command(argv))
    from .cli import main as cli_main

    cli_main(argv)

"""The ``listfilter`` console script.

Mail-side commands run once per message (Postfix's pipe spawns them), so they
are dispatched here before click or anything heavy is imported, and their
plain command lines (what master.cf passes) are parsed with getopt rather than
argparse (:func:`quick_parse`); help and usage errors still get argparse's.
Every other command goes to :mod:`listfilter.cli`.
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


class _Options:
    """Records what a mail command's ``add_arguments()`` declares: the subset of
    argparse they use (long options with a value, ``store_true`` flags)."""

    def __init__(self):
        self.options: dict[str, tuple[str, bool, bool, object]] = {}

    def add_argument(self, *names, required=False, default=None, action=None, **_ignored):
        long = [n for n in names if n.startswith("--")]
        if len(long) != 1 or action not in (None, "store_true"):
            raise ValueError(f"the mail commands' quick parser cannot handle {names!r}")
        flag = action == "store_true"
        self.options[long[0]] = (long[0][2:].replace("-", "_"), flag, required, False if flag else default)


def quick_parse(argv: list[str], name: str, mod):
    """The namespace argparse would build for a plain command line, or None.

    Postfix spawns a mail command per message, and argparse costs a few
    milliseconds of imports each time (gettext, and shutil for its help
    formatter). The command lines master.cf writes are parsed with the
    standard library's lighter getopt instead; anything it does not take
    (help, an unknown option, a stray argument, a missing required option)
    returns None and goes to argparse, for the usual messages.
    """
    import getopt
    from types import SimpleNamespace

    spec = _Options()
    mod.add_arguments(spec)
    longopts = [opt[2:] + ("" if flag else "=") for opt, (_, flag, _, _) in spec.options.items()]
    try:
        at = argv.index(name)
        global_opts, stray = getopt.getopt(argv[:at], "", ["config="])
        opts, rest = getopt.getopt(argv[at + 1:], "", longopts)
    except (ValueError, getopt.GetoptError):
        return None
    if stray or rest:
        return None
    values: dict[str, object] = {"config": None, "command": name}
    values.update({dest: default for dest, _, _, default in spec.options.values()})
    for _, value in global_opts:
        values["config"] = value
    for option, value in opts:
        dest, flag, _, _ = spec.options[option]
        values[dest] = True if flag else value
    given = {option for option, _ in opts}
    if any(required and option not in given for option, (_, _, required, _) in spec.options.items()):
        return None
    return SimpleNamespace(**values)


def run_mail_command(argv: list[str]) -> int:
    import importlib

    name = command_of(argv)
    module, func = MAIL_COMMANDS[name].split(":")
    mod = importlib.import_module(module)
    args = quick_parse(argv, name, mod)
    if args is None:
        args = parse_with_argparse(argv, name, mod)
    return getattr(mod, func)(args)


def parse_with_argparse(argv: list[str], name: str, mod):
    """Help, usage errors and unusual command lines: the full argparse."""
    import argparse

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
    summary = mod.__doc__.strip().splitlines()[0]
    mod.add_arguments(sub.add_parser(name, prog=f"listfilter {name}", help=summary, description=summary))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if command_of(argv) in MAIL_COMMANDS:
        sys.exit(run_mail_command(argv))
    from .cli import main as cli_main

    cli_main(argv)

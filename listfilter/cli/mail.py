"""`deliver`, `bounce` and `policy`: the mail commands, for people who type them.

Postfix runs the console scripts ``listfilter-deliver``, ``listfilter-bounce``
and ``listfilter-policy`` directly, with the snapshot's path on their fixed
command line, so no TOML is parsed and no click is loaded per message. These
commands run the same programs (as their own process: the CLI never imports
the mail side), giving ``--snapshot`` from the config when the command line
has none: ``listfilter deliver --dry-run --sender … --recipient … < message``
shows each rule's verdict.
"""

from __future__ import annotations

import subprocess
import sys

import click

from . import cli, load_config

COMMANDS = {
    "deliver": ("listfilter.mail.deliver", "Filter one message from Postfix's pipe (stdin)."),
    "bounce": ("listfilter.mail.bounce", "Record one bounce sent to a list's -bounces address (stdin)."),
    "policy": ("listfilter.mail.policy", "Answer Postfix policy requests on stdin/stdout (run by spawn)."),
}


def _forward(name: str, module: str, summary: str):
    @click.pass_context
    def command(ctx):
        args = list(ctx.args)
        if "--help" not in args and not any(a == "--snapshot" or a.startswith("--snapshot=") for a in args):
            args = ["--snapshot", str(load_config(ctx).site.snapshot_path), *args]
        data = b"" if "--help" in args else sys.stdin.buffer.read()
        proc = subprocess.run([sys.executable, "-m", module, *args], input=data, capture_output=True)
        sys.stdout.buffer.write(proc.stdout)
        sys.stderr.buffer.write(proc.stderr)
        ctx.exit(proc.returncode)

    command.__doc__ = f"{summary} `listfilter {name} --help` lists its options (those of listfilter-{name})."
    return cli.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                               "help_option_names": []})(command)


for _name, (_module, _summary) in COMMANDS.items():
    _forward(_name, _module, _summary)

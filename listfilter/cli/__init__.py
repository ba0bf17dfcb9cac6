"""The ``listfilter`` command line (click), grouped by concern.

Every command's expected failures are :class:`~listfilter.common.errors.ListfilterError`
subclasses; :class:`Group` turns them into one line on stderr and the error's
exit code, here and nowhere else: 1 a problem (roster, Postfix, store,
snapshot), 78 an invalid config, and click's own 2 for a usage error. The
commands Postfix runs per message have console scripts of their own
(``listfilter-deliver`` …); ``listfilter deliver`` forwards to them
(:mod:`listfilter.cli.mail`).
"""

from __future__ import annotations

import sys

import click

from ..common.errors import ListfilterError
from ..common.paths import CONFIG_ENV, DEFAULT_CONFIG


class Group(click.Group):
    """A click group that reports a ListfilterError as one line and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ListfilterError as exc:
            click.echo(f"listfilter: {exc.report()}", err=True)
            ctx.exit(exc.exit_code)


def fail(message: str, code: int = 1):
    """Stop with one line on stderr (for problems a command finds itself)."""
    click.echo(f"listfilter: {message}", err=True)
    sys.exit(code)


def load_config(ctx: click.Context):
    from ..sync import config as C

    return C.load(ctx.obj["config"])


def open_current_store(config):
    """The config's mail log store, open, with its schema checked (StoreError: missing, out of date)."""
    from ..store import database as ST

    opened = ST.open_store(config.store)
    try:
        opened.require_current()
    except BaseException:
        opened.close()
        raise
    return opened


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", envvar=CONFIG_ENV,
              default=DEFAULT_CONFIG, show_default=True, show_envvar=True,
              help="The list config (TOML).")
@click.version_option(package_name="listfilter")
@click.pass_context
def cli(ctx, config_path):
    """Roster-driven mailing lists on Postfix.

    `sync` (from cron) renders the snapshot and Postfix maps from the list
    config and the roster; Postfix's pipe runs `listfilter-deliver` for each
    message.
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config_path


# the commands register themselves on `cli`
from . import bounces, check, dnscheck, held, mail, members, status, store, sync, trace, web  # noqa: E402, F401


def main(argv=None):
    cli(args=argv, prog_name="listfilter")

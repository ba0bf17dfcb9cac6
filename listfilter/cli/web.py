"""`web` and `web passwd`: the admin pages."""

from __future__ import annotations

import sys

import click

from ..sync import config as C
from . import cli, fail, load_config

# ---------------------------------------------------------------- web


@cli.group("web", invoke_without_command=True)
@click.option("--bind", metavar="HOST:PORT", help="Listen here (default: [web] bind, else 127.0.0.1:8080).")
@click.pass_context
def web_cmd(ctx, bind):
    """Serve the admin pages (/email) with waitress. `listfilter web passwd` makes a password hash."""
    if ctx.invoked_subcommand is not None:
        return
    from ..admin import app as W

    config = load_config(ctx)
    if bind is not None:
        try:
            C.parse_bind(bind)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--bind") from None
    try:
        W.serve(config, bind)
    except W.WebError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot listen on {bind or config.web.bind}: {exc.strerror or exc}")


@web_cmd.command("passwd")
@click.argument("user", required=False)
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the password from standard input (one line).")
def web_passwd(user, from_stdin):
    """Print a password hash for [web.accounts] (the password is asked twice).

    The hash is scrypt with N=2^17, r=8, p=1, OWASP's minimum, written into
    the hash so that `listfilter check` can hold older, weaker ones to it.
    """
    from ..admin import auth as A

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        fail("the password is too short (at least 8 characters)")
    hashed = A.hash_password(password)
    if user:
        click.echo(f'"{user.lower()}" = "{hashed}"')
    else:
        click.echo(hashed)

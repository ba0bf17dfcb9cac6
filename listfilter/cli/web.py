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
@click.option("--print", "print_only", is_flag=True,
              help="Print the USER:HASH line (with no USER, the hash) instead of writing the accounts file.")
@click.option("--from-config", is_flag=True,
              help="Copy the hashes in the config's [web.accounts] (USER's, or every one) into the accounts file;"
                   " asks for no password.")
@click.option("--group", default="listfilter-web", show_default=True,
              help="The group of a new accounts file: the group the web app runs as.")
@click.pass_context
def web_passwd(ctx, user, from_stdin, print_only, from_config, group):
    """Set USER's password in the accounts file ([web] accounts_file, default /etc/listfilter/web-accounts).

    The password is asked twice. The file holds one `user:hash` line per
    account; it is replaced atomically, and a new one is root's, of --group,
    mode 0640. The running app reads it at the next request. The hash is
    scrypt with N=2^17, r=8, p=1, OWASP's minimum, written into the hash so
    that `listfilter check` can hold older, weaker ones to it. Without USER,
    or with --print, the hash is printed and nothing is written.
    """
    if from_config:
        if print_only:
            raise click.UsageError("--from-config writes the accounts file: it cannot be used with --print")
        config = load_config(ctx)
        configured = config.web.accounts if config.web else {}
        wanted = {u: h for u, h in configured.items() if user is None or u == user.lower()}
        if not wanted:
            fail(f"{config.path}: no [web.accounts] entry" + (f" for {user}" if user else "") + " to copy")
        _write(config, wanted, group)
        click.echo(f"now delete [web.accounts] from {config.path}: the accounts file's hashes are the ones used")
        return
    config = load_config(ctx) if user and not print_only else None  # a config error before the password
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        fail("the password is too short (at least 8 characters)")
    from ..admin import auth as A

    hashed = A.hash_password(password)
    if not user:
        click.echo(hashed)
    elif print_only:
        click.echo(f"{user.lower()}:{hashed}")
    else:
        _write(config, {user.lower(): hashed}, group)


def _write(config: C.Config, accounts: dict[str, str], group: str) -> None:
    """Write ``accounts`` into the config's accounts file and say where, with what owner and mode."""
    import grp
    import pwd
    from pathlib import Path

    from ..admin import auth as A

    path = config.web.accounts_file if config.web else Path(C.DEFAULT_WEB_ACCOUNTS)
    try:
        uid, gid, mode = A.write_accounts(path, accounts, group)
    except A.AccountsFileError as exc:
        fail(str(exc))

    def name(getter, ident):
        try:
            return getter(ident)[0]
        except KeyError:
            return str(ident)

    owner = f"{name(pwd.getpwuid, uid)}:{name(grp.getgrgid, gid)}, mode {mode:04o}"
    for user in accounts:
        click.echo(f"{user}: password hash written to {path} ({owner})")

"""`appliance console …`: the fleet console's server (its own FastAPI app and database), its schema
migrations, users, API and enrolment tokens, and the audit log's check."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from appliance.cli.state import CliState

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

app = typer.Typer(help="The fleet console: enrolment, inventory, users, audit.", no_args_is_help=True)


def _state(ctx: typer.Context) -> Path:
    from appliance.config.paths import data_root

    state: CliState = ctx.obj
    return state.settings.console.state_dir or data_root() / "console"


def _url(ctx: typer.Context) -> str:
    state: CliState = ctx.obj
    return state.settings.console.database or f"sqlite:///{_state(ctx) / 'console.db'}"


@app.command()
def serve(ctx: typer.Context) -> None:
    """Serve the console (console.host:console.port), its database migrated first."""
    import uvicorn

    from appliance.console.app import make_app
    from appliance.console.authority import load_or_make
    from appliance.console.db import open_database, safe_url

    state: CliState = ctx.obj
    sessions = open_database(_url(ctx))
    first = bootstrap(sessions)
    conf = state.settings.console
    if first:
        typer.echo(f"first start: user admin made, password (shown once, stored hashed): {first}")
    typer.echo(f"fleet console at http://{conf.host}:{conf.port}/ (database {safe_url(_url(ctx))})")
    published = None
    if conf.repository is not None:
        from appliance.console.repository import Published

        published = Published(conf.repository, list(conf.keys))
        expires = f"{published.expires():%Y-%m-%d %H:%M} UTC"
        typer.echo(f"releases checked against {conf.repository}; its timestamp expires {expires}"
                   + (", re-signed with the online keys" if conf.keys else " (no console.keys: not re-signed)"))
    app_ = make_app(sessions, load_or_make(_state(ctx)), published=published)
    uvicorn.run(app_, host=conf.host, port=conf.port, log_level="warning", timeout_graceful_shutdown=10)


def bootstrap(sessions: sessionmaker[Session]) -> str | None:
    """On a console without users: an admin with a random password (returned, to be shown once)."""
    import secrets

    from sqlalchemy import select

    from appliance.console import accounts, audit
    from appliance.console.db import transaction
    from appliance.console.schema import User

    with transaction(sessions) as session:
        if session.scalar(select(User.id).limit(1)) is not None:
            return None
        password = secrets.token_urlsafe(15)
        accounts.add_user(session, "admin", "admin", password)
        audit.record(session, "console", "user.add", "user:admin", role="admin", first_start=True)
    return password


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Bring the console's database to the newest schema (keeps its data)."""
    from appliance.console.db import head, make_engine, revision, safe_url, upgrade

    engine = make_engine(_url(ctx))
    before = revision(engine)
    upgrade(engine)
    typer.echo(f"{safe_url(_url(ctx))}: {before or 'empty'} -> {head()}")


@app.command("user")
def user(ctx: typer.Context, name: str = typer.Argument(..., help="The user's name."),
         role: str = typer.Option("viewer", help="viewer, operator or admin."),
         password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin "
                                             "(else asked for, twice)")) -> None:
    """Add a user of the console."""
    from appliance.console import accounts, audit
    from appliance.console.db import open_database, transaction

    password = sys.stdin.readline().rstrip("\n") if password_stdin else \
        typer.prompt("password", hide_input=True, confirmation_prompt=True)
    with transaction(open_database(_url(ctx))) as session:
        made = accounts.add_user(session, name, role, password)
        audit.record(session, "cli", "user.add", f"user:{made.name}", role=role)
    typer.echo(f"user {name} ({role}) added")


@app.command("token")
def token(ctx: typer.Context, name: str = typer.Argument(..., help="The user the API token acts as."),
          label: str = typer.Option("api", help="What the token is for."),
          days: int = typer.Option(90, min=1, max=3650, help="Days until it expires.")) -> None:
    """Make an API token for a user (printed once)."""
    from sqlalchemy import select

    from appliance.console import accounts, audit
    from appliance.console.db import open_database, transaction
    from appliance.console.schema import User

    with transaction(open_database(_url(ctx))) as session:
        found = session.scalar(select(User).where(User.name == name))
        if found is None:
            raise typer.BadParameter(f"no user {name!r}")
        made = accounts.issue_token(session, found, label, timedelta(days=days))
        audit.record(session, "cli", "token.add", f"user:{name}", label=label, days=days)
    typer.echo(made)


@app.command("enrolment-token")
def enrolment_token(ctx: typer.Context, group: str = typer.Option(None, help="The group the device joins."),
                    hours: float = typer.Option(24, min=0.05, max=720, help="Hours until it expires.")) -> None:
    """Make a one-time enrolment token (printed once): give it to `appliance agent enrol`, or put it on an
    image's boot partition as appliance/enrolment.token."""
    from appliance.console import audit
    from appliance.console.authority import make_token
    from appliance.console.db import open_database, transaction

    with transaction(open_database(_url(ctx))) as session:
        made = make_token(session, "cli", group, timedelta(hours=hours))
        audit.record(session, "cli", "enrolment-token.add", f"group:{group or '-'}", hours=hours)
    typer.echo(made)


@app.command("audit-check")
def audit_check(ctx: typer.Context) -> None:
    """Walk the audit log's hash chain; exit 1 and say where if it was tampered with."""
    from appliance.console import audit
    from appliance.console.db import open_database, transaction

    with transaction(open_database(_url(ctx))) as session:
        problems = audit.check(session)
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo("audit log intact")

"""The console's database: an engine for a URL (SQLite in WAL mode with foreign keys on, or PostgreSQL through
psycopg), its schema brought to the newest Alembic revision, and sessions.

``sqlite:///PATH`` is the default for one site; ``postgresql+psycopg://user@host/db`` when a fleet outgrows
one machine. Migrations run at start-up (``upgrade``) and by ``appliance console migrate``; they keep data."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from appliance.errors import ApplianceError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class DatabaseError(ApplianceError):
    """The console's database cannot be opened or migrated; the message says which URL (without password)."""


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL too broken to parse: its scheme only
        return url.split(":", 1)[0] + ":…"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
    cursor.close()


def make_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"check_same_thread": False}, pool_size=20, max_overflow=20)
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=20)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise DatabaseError(f"cannot use the console database {safe_url(url)}: {exc}") from exc


def _config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def revision(engine: Engine) -> str | None:
    """The revision the database is at (None: empty)."""
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot open the console database {safe_url(str(engine.url))}: "
                            f"{getattr(exc, 'orig', None) or exc}") from exc


def head() -> str:
    head = ScriptDirectory.from_config(_config(create_engine("sqlite://"))).get_current_head()
    assert head is not None
    return head


def upgrade(engine: Engine, to: str = "head") -> None:
    """Bring the schema to ``to`` (every migration in order, each in its transaction where the database can)."""
    try:
        command.upgrade(_config(engine), to)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"migrating {safe_url(str(engine.url))} failed: {getattr(exc, 'orig', None) or exc}"
                            ) from exc


def open_database(url: str) -> sessionmaker[Session]:
    """An engine for ``url`` migrated to the newest schema, as a session factory."""
    engine = make_engine(url)
    try:
        upgrade(engine)
    except DatabaseError:
        raise
    except Exception as exc:  # the driver's own (refused, bad file)
        raise DatabaseError(f"cannot open the console database {safe_url(url)}: {exc}") from exc
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    with sessions() as session, session.begin():
        yield session

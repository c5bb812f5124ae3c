"""The fleet console: a separate FastAPI app (``appliance console serve``) that enrols devices, keeps their
inventory, audits every admin action and (later) rolls releases out in waves. Its database is SQLAlchemy 2 with
Alembic migrations: SQLite (WAL) for one site, PostgreSQL by URL."""

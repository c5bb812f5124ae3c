"""Alembic's environment for the console: the engine comes from ``appliance.console.db`` (never an ini file),
and the schema's metadata for autogenerate (``alembic revision --autogenerate`` during development)."""

from alembic import context

from appliance.console.schema import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()

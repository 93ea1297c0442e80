"""Alembic environment for the kit's example migrations: the target is the kit's metadata."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool

from wa_status_backend import metadata

config = context.config
url = (
    context.get_x_argument(as_dictionary=True).get("url")
    or os.environ.get("DATABASE_URL")
    or config.get_main_option("sqlalchemy.url")
)
if not url:
    raise SystemExit("alembic: give the database URL with -x url=... or DATABASE_URL")


def run_offline() -> None:
    context.configure(url=url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()

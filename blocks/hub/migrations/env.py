"""Alembic environment of the hub database (:mod:`cryblock.blocks.hub.db`).

Run by :func:`cryblock.blocks.hub.db.open_db` with an open connection in
``config.attributes["connection"]``; also usable from the alembic command line with
``-x url=...``-free configs that set ``sqlalchemy.url``.
"""
from alembic import context
from sqlalchemy import engine_from_config, pool

from cryblock.blocks.hub.db import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


conn = config.attributes.get("connection")
if conn is not None:
    _run(conn)
else:
    engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as c:
        _run(c)

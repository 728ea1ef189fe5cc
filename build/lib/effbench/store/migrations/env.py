"""Alembic environment: migrations run on the connection effbench hands over
(effbench.store.migrations.upgrade); `alembic` on the command line needs
`-x url=...` (e.g. to autogenerate a revision against a scratch database)."""

from alembic import context
from sqlalchemy import create_engine

from effbench.store.schema import Base

config = context.config
connection = config.attributes.get("connection")


def run(conn) -> None:
    # render_as_batch: SQLite alters tables by copying them; the same scripts run on PostgreSQL.
    context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    run(connection)
else:
    with create_engine(context.get_x_argument(as_dictionary=True)["url"]).begin() as conn:
        run(conn)

"""Alembic migrations of the SQL store's schema, run programmatically on the
store's own connection (inside its creation lock), so no alembic.ini is needed."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Connection

_HERE = Path(__file__).resolve().parent


def _config(connection: Connection | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def script():
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def is_known(revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return script().get_revision(revision) is not None
    except CommandError:
        return False


def upgrade(connection: Connection, stamp: str | None = None) -> None:
    """Bring the schema on `connection` to the newest revision; `stamp` first records the
    revision an unversioned store already has (its tables exist, its version table does not)."""
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines are not the user's business
    from alembic import command

    cfg = _config(connection)
    if stamp is not None:
        command.stamp(cfg, stamp)
    command.upgrade(cfg, "head")

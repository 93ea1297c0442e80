"""The Alembic migration example (contrib/flask/alembic) builds exactly the kit's models' schema,
with and without the kit's own reminder table, and tears it down again."""

from __future__ import annotations

import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, inspect

from conftest import KIT_DIR
from wa_status_backend import metadata

INI = KIT_DIR / "alembic" / "alembic.ini"


def alembic(url: str, *args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "alembic", "-c", str(INI), "-x", f"url={url}", *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def diff(engine, target: MetaData) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), target)


def kit_tables(engine) -> set:
    return {t for t in inspect(engine).get_table_names() if t.startswith("wa_status_")}


def test_upgrade_head_matches_the_models_and_downgrade_removes_everything(tmp_path):
    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    engine = create_engine(url)
    alembic(url, "upgrade", "head")
    assert diff(engine, metadata) == []
    assert kit_tables(engine) == set(metadata.tables)

    # An app that maps its own CRMReminder stops at the first revision.
    alembic(url, "downgrade", "wa_status_0001")
    without = MetaData()
    for table in metadata.sorted_tables:
        if table.name != "wa_status_reminders":
            table.to_metadata(without)
    assert diff(engine, without) == []
    assert "wa_status_reminders" not in kit_tables(engine)

    alembic(url, "downgrade", "base")
    assert kit_tables(engine) == set()
    engine.dispose()


def test_the_kit_works_on_a_migrated_database(tmp_path, make_kit):
    """create_tables and the migration are interchangeable: a kit runs on the migrated file."""
    home = tmp_path / "migrated"
    home.mkdir()
    alembic(f"sqlite:///{home / 'kit.db'}", "upgrade", "head")
    kit = make_kit(home=home)
    assert kit.post({"tenant_id": "business_1", "status": "disconnected", "reason": "x"}, key="k").status_code == 200
    assert kit.client("b1").get("/api/notifications").get_json()["unread_count"] == 1

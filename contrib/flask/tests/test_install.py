"""The kit as a package (issue 13): what the tests import is the installed distribution, it
carries the catalogue, and nothing in the kit reaches for ``sys.path``."""

from __future__ import annotations

import sysconfig
from importlib import metadata, resources
from pathlib import Path

import wa_status_backend
from conftest import CATALOGUE_SOURCE, KIT_DIR


def test_the_kit_is_imported_from_the_installed_package():
    where = Path(wa_status_backend.__file__).resolve()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert site in where.parents, f"wa_status_backend came from {where}, not from {site}: install ./contrib/flask"
    assert KIT_DIR not in where.parents
    dist = metadata.distribution("wa-status-backend")
    assert dist.version == wa_status_backend.__version__
    requires = " ".join(dist.requires or [])
    assert "Flask" in requires and "SQLAlchemy" in requires


def test_the_installed_catalogue_is_byte_for_byte_the_shared_one():
    shared = CATALOGUE_SOURCE.read_bytes()
    installed = resources.files("wa_status_backend").joinpath("bell-messages.json").read_bytes()
    in_tree = (KIT_DIR / "src" / "wa_status_backend" / "bell-messages.json").read_bytes()
    fix = ("cp contrib/i18n/bell-messages.json contrib/flask/src/wa_status_backend/ "
           "&& pip install ./contrib/flask")
    assert in_tree == shared, f"the kit's copy of the catalogue differs from contrib/i18n: {fix}"
    assert installed == shared, f"the installed catalogue is stale: {fix}"


def test_the_package_is_typed():
    assert resources.files("wa_status_backend").joinpath("py.typed").is_file()


def test_no_sys_path_edits_in_the_kit_its_demo_or_its_tests():
    offenders = []
    for path in [*KIT_DIR.joinpath("src").rglob("*.py"), *KIT_DIR.joinpath("tests").rglob("*.py"),
                 KIT_DIR / "app.py", *KIT_DIR.joinpath("alembic").rglob("*.py")]:
        text = path.read_text(encoding="utf-8")
        for needle in ("sys.path.insert", "sys.path.append", "sys.path +=", "sys.path[", "PYTHONPATH"):
            if needle in text and path.name != "test_install.py":
                offenders.append(f"{path.relative_to(KIT_DIR)}: {needle}")
    assert offenders == []

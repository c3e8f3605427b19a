from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from minipacs.index.database import MIGRATIONS_DIR, create_index_engine, upgrade_schema
from minipacs.index.repository import as_int
from minipacs.index.schema import OPTIONAL_INDEXES, Base
from tests.index.pg import postgres_schema_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        made = create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
        yield made
        made.dispose()
    else:
        with postgres_schema_url() as url:
            made = create_index_engine(url)
            yield made
            made.dispose()


def test_migration_creates_exactly_the_models(engine: Engine) -> None:
    upgrade_schema(engine)
    upgrade_schema(engine)  # idempotent
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    # indexes made for another dialect only (``Index(...).ddl_if(dialect=...)``; Alembic compares them anyway)
    diff = [d for d in diff if not (d[0] == "add_index" and _for_other_dialect(d[1], engine.dialect.name))]
    diff = [d for d in diff if not (d[0] == "remove_index" and d[1].name in OPTIONAL_INDEXES)]
    assert diff == []
    names = set(inspect(engine).get_table_names())
    assert {"patients", "studies", "series", "instances", "associations", "alembic_version"} <= names


def _for_other_dialect(index: Any, dialect: str) -> bool:
    """Whether the model declares ``index`` for another dialect only (Alembic's copy forgets it)."""
    for table in Base.metadata.tables.values():
        for declared in table.indexes:
            ddl_if = getattr(declared, "_ddl_if", None)
            if declared.name == index.name and ddl_if is not None:
                return ddl_if.dialect not in (None, dialect)
    return False


def test_migrations_ship_inside_the_package() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0001_initial.py").is_file()


@pytest.mark.parametrize(("text", "expected"), [("12", 12), (" +3 ", 3), ("-1", -1), ("x", None), ("9" * 12, None)])
def test_as_int(text: str, expected: Any) -> None:
    assert as_int(text) == expected


def test_the_migrations_have_one_head() -> None:
    """A second head would make 'alembic upgrade head' fail at start-up: merge branches."""
    from alembic.script import ScriptDirectory

    from minipacs.index.database import alembic_config

    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1


def test_head_revision_is_alembics_head_and_every_script_is_named_by_its_revision() -> None:
    """upgrade_schema skips Alembic when the index is at head_revision(), read from the file names."""
    from alembic.script import ScriptDirectory

    from minipacs.index.database import alembic_config, head_revision

    scripts = ScriptDirectory.from_config(alembic_config())
    assert scripts.get_current_head() == head_revision()
    for script in scripts.walk_revisions():
        assert Path(script.path).name.startswith(f"{script.revision}_"), script.path


def test_a_started_server_at_head_never_imports_alembic(tmp_path: Path) -> None:
    """Migrating imports Alembic (and Mako, Pygments: ~11 MiB); opening an index at head does not."""
    probe = (
        "import sys; from minipacs.index.database import IndexDatabase as D; "
        f"D.open('sqlite:///{tmp_path}/index.db').engine.dispose(); print('alembic' in sys.modules)"
    )
    first = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    again = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert (first.stdout.strip(), again.stdout.strip()) == ("True", "False")


def test_an_index_one_revision_behind_is_upgraded(engine: Engine) -> None:
    from alembic import command

    from minipacs.index.database import alembic_config, at_head, head_revision

    with engine.connect() as connection:
        assert not at_head(connection)  # empty: no version table
        command.upgrade(alembic_config(connection), "head")
        command.downgrade(alembic_config(connection), "-1")
        connection.commit()
        assert not at_head(connection)
    upgrade_schema(engine)
    with engine.connect() as connection:
        assert at_head(connection)
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == head_revision()

"""Every service's migrations build exactly the schema its models describe."""

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from hms import create_app
from hms.bus.mesh import mesh_of


@pytest.mark.parametrize("service", ["svc", "ach", "metrics", "notifier"])
def test_migrations_match_models(tmp_path: Path, service: str) -> None:
    app = create_app({"HMS_INSTANCE_PATH": str(tmp_path), "HMS_START": False, "HMS_SERVICES": [service]})
    mesh = mesh_of(app)
    store = mesh.stores[service]
    store.upgrade()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), store.metadata)
        tables = set(inspect(conn).get_table_names())
    assert diff == []
    assert {"outbox", "inbox", "dead_letters", "alembic_version"} <= tables
    mesh.close()


def test_each_service_has_its_own_database(tmp_path: Path) -> None:
    app = create_app({"HMS_INSTANCE_PATH": str(tmp_path), "HMS_START": False})
    mesh = mesh_of(app)
    urls = {name: str(store.engine.url) for name, store in mesh.stores.items()}
    assert len(set(urls.values())) == len(urls) == 4
    assert all(url.endswith(f"{name}.db") for name, url in urls.items())
    mesh.close()

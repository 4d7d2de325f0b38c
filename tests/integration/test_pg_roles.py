"""docs/deploy.md's one-role-per-service setup works, and keeps each service out of the others' tables."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from hms import create_app
from hms.runtime import mesh_of
from tests.pg import fresh_postgres_database, server_url


def test_each_service_role_migrates_its_schema_and_cannot_read_another(tmp_path: Path) -> None:
    server = create_engine(server_url(), isolation_level="AUTOCOMMIT")  # skips (fails in CI) without a server
    suffix = uuid.uuid4().hex[:8]
    roles = {svc: f"hms_{svc}_{suffix}" for svc in ("svc", "ach")}
    for url in fresh_postgres_database():
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        db = make_url(url).database
        with admin.connect() as c:
            for role in roles.values():
                c.execute(text(f"CREATE ROLE {role} LOGIN"))
            c.execute(text(f'REVOKE ALL ON DATABASE "{db}" FROM PUBLIC'))
            c.execute(text(f'GRANT CONNECT ON DATABASE "{db}" TO {", ".join(roles.values())}'))
            c.execute(text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
            for svc, role in roles.items():
                c.execute(text(f"CREATE SCHEMA {svc} AUTHORIZATION {role}"))
        try:
            as_role = {
                svc: make_url(url).set(username=role).render_as_string(hide_password=False)
                for svc, role in roles.items()
            }
            app = create_app(
                {
                    "HMS_INSTANCE_PATH": str(tmp_path),
                    "HMS_SERVICES": ["svc", "ach"],
                    "HMS_SVC_DATABASE_URL": as_role["svc"],
                    "HMS_ACH_DATABASE_URL": as_role["ach"],
                }
            )
            mesh = mesh_of(app)
            mesh.upgrade()
            ach = mesh.stores["ach"].engine
            with ach.connect() as c:
                assert c.execute(text("SELECT count(*) FROM ach.payments")).scalar() == 0
                with pytest.raises(ProgrammingError, match="permission denied for schema svc"):
                    c.execute(text("SELECT * FROM svc.claims"))
            mesh.close()
        finally:
            admin.dispose()
            with server.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
                for role in roles.values():
                    c.execute(text(f"DROP ROLE IF EXISTS {role}"))
            server.dispose()

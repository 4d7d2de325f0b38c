"""The admin commands, run as a user would through the Flask CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
from flask import Flask
from flask.testing import FlaskClient

from hms.runtime import Mesh
from tests.conftest import DIEGO, eventually, running


def test_auth_token_issues_a_token_the_gateway_accepts(app: Flask, client: FlaskClient) -> None:
    result = app.test_cli_runner().invoke(args=["auth", "token", "--role", "caseworker", "--sub", "cw-7"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["sub"], claims["role"], claims["iss"], claims["aud"]) == ("cw-7", "caseworker", "hms-dev", "hms")
    assert client.get("/claims", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_auth_token_refuses_an_unknown_role(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["auth", "token", "--role", "king", "--sub", "x"])
    assert result.exit_code == 2 and "king" in result.output and "citizen" in result.output


def test_mesh_status_without_a_running_server_on_memory_says_so(app: Flask) -> None:
    # memory:// is the running server's own bus: a registry built here would show this process, not that one.
    result = app.test_cli_runner().invoke(args=["mesh", "status"])
    assert result.exit_code == 1
    assert "no `hms up` runs on" in result.output and "--url" in result.output


def test_metrics_payouts_table_and_csv(app: Flask, client: FlaskClient, token: Any) -> None:
    claim = client.post("/claims", json=DIEGO, headers=token("diego")).json
    eventually(lambda: client.get(f"/claims/{claim['id']}", headers=token("diego")).json["status"] == "paid")
    runner = app.test_cli_runner()
    table = eventually(lambda: (r := runner.invoke(args=["metrics", "payouts"])).output.count("\n") >= 3 and r)
    assert table.exit_code == 0 and table.output.splitlines()[0].split() == [
        "DAY",
        "COUNT",
        "P50_S",
        "P90_S",
        "P99_S",
        "MAX_S",
    ]
    assert table.output.splitlines()[-1].split()[:2] == ["all", "1"]
    csv = runner.invoke(args=["metrics", "payouts", "--csv"])
    assert csv.exit_code == 0 and csv.output.splitlines()[0] == "day,count,p50_s,p90_s,p99_s,max_s"
    assert csv.output.splitlines()[-1].startswith("all,1,")


def test_dead_letters_list_and_replay(app: Flask, mesh: Mesh) -> None:
    runner = app.test_cli_runner()
    assert runner.invoke(args=["bus", "dead-letters", "list"]).output.strip() == "no dead letters"
    # payment.sent for a claim svc never heard of: svc cannot apply it and gives up.
    store = mesh.stores["ach"]
    with store.session() as s:
        s.emit(
            "payment.sent",
            {"claimId": "ghost", "paymentId": "p1", "citizen": "x", "amount": 600, "sentAt": "2026-11-27T10:00:00Z"},
        )
    svc = mesh.stores["svc"]
    eventually(lambda: svc.list_dead_letters(), timeout=60)
    listing = runner.invoke(args=["bus", "dead-letters"])
    assert "payment.sent" in listing.output and "svc.on_payment_sent" in listing.output
    dl_id = listing.output.splitlines()[1].split()[0]
    replay = runner.invoke(args=["bus", "dead-letters", "replay", dl_id])
    assert replay.exit_code == 1 and "unknown claim ghost" in replay.output
    bad = runner.invoke(args=["bus", "dead-letters", "replay", "nope"])
    assert bad.exit_code == 2 and "SERVICE:NUMBER" in bad.output
    both = runner.invoke(args=["bus", "dead-letters", "replay"])
    assert both.exit_code == 2 and "exactly one" in both.output


def test_db_upgrade_is_repeatable(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0 and "svc, ach, metrics, notifier" in result.output


def orphan(mesh: Mesh) -> None:
    """Bank details for claim id orphan-1, registered 90 minutes ago, that no svc filed (a gateway stopped between
    the registration and the submit)."""
    from datetime import timedelta

    from hms.ach.models import Account
    from hms.runtime import utcnow

    details = {"citizen": "lea", "claimId": "orphan-1", **DIEGO["directDeposit"]}
    mesh.bus.request("ach.accounts.register", details, 5, headers=mesh.credentials("gateway"), version=2)
    with mesh.stores["ach"].session() as s:
        s.query(Account).one().registered_at = utcnow() - timedelta(minutes=90)


def test_sweep_accounts_deletes_the_details_of_a_submission_never_filed_and_says_so(app: Flask, mesh: Mesh) -> None:
    from hms.ach.models import Account

    runner = app.test_cli_runner()
    orphan(mesh)
    kept = runner.invoke(args=["audit", "sweep-accounts", "--older-than-minutes", "120"])
    assert (kept.exit_code, kept.output) == (
        0,
        "unused bank details: 0 deleted, 0 kept (their claims were filed), 0 failed\n",
    )
    swept = runner.invoke(args=["audit", "sweep-accounts"])
    assert (swept.exit_code, swept.output) == (
        0,
        "unused bank details: 1 deleted, 0 kept (their claims were filed), 0 failed\n",
    )
    with mesh.stores["ach"].session() as s:
        assert s.query(Account).count() == 0
    bad = runner.invoke(args=["audit", "sweep-accounts", "--older-than-minutes", "0"])
    assert bad.exit_code == 2 and "--older-than-minutes" in bad.output and "0 is not in the range x>=1" in bad.output


def test_a_gateway_sweeps_unused_bank_details_on_its_own(settings: dict[str, Any], caplog: Any) -> None:
    """HMS_SWEEP_ACCOUNTS_EVERY_S: a gateway process runs the sweep itself, no cron job needed. Details an hour
    old that svc never filed are deleted (and the deletion logged); a young registration, whose submission may
    still be on its way, is kept round after round."""
    from hms.ach.models import Account
    from hms.runtime import mesh_of

    with running({**settings, "HMS_SWEEP_ACCOUNTS_EVERY_S": 0.2}) as app:
        mesh = mesh_of(app)
        orphan(mesh)
        young = {"citizen": "max", "claimId": "young-1", **DIEGO["directDeposit"]}
        mesh.bus.request("ach.accounts.register", young, 5, headers=mesh.credentials("gateway"), version=2)

        def accounts() -> list[str]:
            with mesh.stores["ach"].session() as s:
                return sorted(a.claim_id for a in s.query(Account))

        eventually(lambda: accounts() == ["young-1"], 10)
        eventually(lambda: "unused bank details deleted for 1 submissions svc never filed" in caplog.text, 5)
        time.sleep(1.0)  # five more rounds
        assert accounts() == ["young-1"]


def test_sweep_accounts_keeps_what_svc_cannot_settle_and_fails(settings: dict[str, Any]) -> None:
    """No svc process: whether a submission was filed cannot be known, so its details stay and the command fails,
    naming the claim."""
    from hms.ach.models import Account
    from hms.runtime import mesh_of

    with running({**settings, "HMS_SERVICES": ["gateway", "ach", "auth"]}) as app:
        mesh = mesh_of(app)
        orphan(mesh)
        failed = app.test_cli_runner().invoke(args=["audit", "sweep-accounts"])
        assert failed.exit_code == 1
        assert "FAILED orphan-1: no responders for 'svc.claims.withdraw'" in failed.output
        assert "unused bank details: 0 deleted, 0 kept (their claims were filed), 1 failed" in failed.output
        with mesh.stores["ach"].session() as s:
            assert [a.claim_id for a in s.query(Account)] == ["orphan-1"]


def test_audit_commands_name_the_service_that_cannot_answer(settings: dict[str, Any]) -> None:
    """No ach process: both audit commands end with one line naming the subject nobody served, exit 1, and no
    traceback."""
    with running({**settings, "HMS_SERVICES": ["gateway", "svc", "auth"]}) as app:
        runner = app.test_cli_runner()
        for command, subject in (("sweep-accounts", "ach.accounts.unused"), ("reconcile", "ach.payments.ledger")):
            failed = runner.invoke(args=["audit", command])
            assert (failed.exit_code, failed.output) == (1, f"Error: no responders for '{subject}'\n")


def test_reconcile_agrees_after_the_flow_and_finds_planted_gaps(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh
) -> None:
    runner = app.test_cli_runner()
    paid = client.post("/claims", json=DIEGO, headers=token("diego")).json
    client.post("/claims", json={**DIEGO, "separationReason": "quit"}, headers=token("rosa"))
    eventually(lambda: runner.invoke(args=["audit", "reconcile", "--strict"]).exit_code == 0)
    ok = runner.invoke(args=["audit", "reconcile", "--strict"])
    assert "claims 2, approved 1, payments 1, gaps 0, in flight 0" in ok.output

    # A double payment at the bank and a transfer nobody approved.
    statement = Path(app.config["HMS_ACH_SANDBOX_STATEMENT"])
    line = json.loads(statement.read_text().splitlines()[0])
    with statement.open("a") as f:
        f.write(json.dumps(line) + "\n" + json.dumps({**line, "claimId": "not-approved"}) + "\n")
    bad = runner.invoke(args=["audit", "reconcile"])
    assert bad.exit_code == 1
    assert f"GAP {paid['id']}: paid 2 times at the bank" in bad.output
    assert "GAP not-approved: the bank paid a claim for which ach has no payment" in bad.output


def test_reconcile_counts_only_its_own_transfers_on_a_shared_statement(
    app: Flask, client: FlaskClient, token: Any, settings: dict[str, Any], tmp_path: Any
) -> None:
    from hms import create_app
    from hms.runtime import mesh_of

    # A second deployment (SQLite, its own instance folder) whose bank statement is the same file.
    other = create_app(
        {
            **settings,
            "HMS_DATABASE_URL": "",
            "HMS_INSTANCE_PATH": str(tmp_path / "other"),
            "HMS_ACH_SANDBOX_STATEMENT": app.config["HMS_ACH_SANDBOX_STATEMENT"],
        }
    )
    mesh_of(other).upgrade()
    mesh_of(other).start()
    try:
        other_client, other_token = other.test_client(), other.extensions["hms.auth"].issue
        for sub in ("ana", "ben"):
            headers = {"Authorization": "Bearer " + other_token(sub, "citizen")}
            assert other_client.post("/claims", json=DIEGO, headers=headers).status_code == 201
        assert client.post("/claims", json=DIEGO, headers=token("diego")).status_code == 201
        statement = Path(app.config["HMS_ACH_SANDBOX_STATEMENT"])
        eventually(lambda: statement.exists() and len(statement.read_text().splitlines()) == 3)
        for deployment, claims in ((app, 1), (other, 2)):
            runner = deployment.test_cli_runner()
            eventually(lambda r=runner: r.invoke(args=["audit", "reconcile", "--strict"]).exit_code == 0)
            ok = runner.invoke(args=["audit", "reconcile", "--strict"])
            assert f"claims {claims}, approved {claims}, payments {claims}, gaps 0, in flight 0" in ok.output
        originators = {json.loads(line)["originator"] for line in statement.read_text().splitlines()}
        assert len(originators) == 2
    finally:
        mesh_of(other).close()

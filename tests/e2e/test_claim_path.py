"""One claim, one path: the account is registered before the decision, so no claim is approved that cannot be paid.

In one process on both engines (ach refusing details the gateway accepted), and split over NATS (no ach process
while claims come in, then one starts).
"""

from __future__ import annotations

import importlib
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hms.ach.bank import read_statement
from tests.conftest import DIEGO, eventually
from tests.e2e.proc import HmsProcess
from tests.e2e.test_faults import tokens
from tests.e2e.test_split import FAST, Load, assert_each_paid_once
from tests.natsd import NatsServer


def claims_of(client: FlaskClient, token: Any, citizen: str) -> list[dict[str, Any]]:
    return client.get("/claims", headers=token(citizen)).json["items"]  # type: ignore[no-any-return,index]


@pytest.mark.parametrize("bus_url", ["memory", "nats"], indirect=True)
def test_details_ach_refuses_leave_nothing_decided_and_the_corrected_claim_is_paid_once(
    app: Flask, client: FlaskClient, token: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ach refuses an account the gateway's checks let through (here: one its bank has closed to new payees)."""
    ach = importlib.import_module("hms.ach.service")  # the module (the package's `service` is the declaration)
    closed = DIEGO["directDeposit"]["accountNumber"]
    check = ach.bank_details_problem
    monkeypatch.setattr(
        ach,
        "bank_details_problem",
        lambda d: ("accountNumber", "is closed to new payments") if d["accountNumber"] == closed else check(d),
    )
    headers = {**token("diego"), "Idempotency-Key": "first-try"}
    refused = client.post("/claims", json=DIEGO, headers=headers)
    assert refused.status_code == 422, refused.json
    assert (refused.json["field"], refused.json["detail"]) == (
        "directDeposit.accountNumber",
        "accountNumber is closed to new payments",
    )
    assert claims_of(client, token, "diego") == []  # nothing decided, so nothing approved and stranded

    corrected = {**DIEGO, "directDeposit": {**DIEGO["directDeposit"], "accountNumber": "000987654321"}}
    accepted = client.post("/claims", json=corrected, headers={**token("diego"), "Idempotency-Key": "second-try"})
    assert (accepted.status_code, accepted.json["status"], accepted.json["account"]) == (201, "approved", "****4321")
    eventually(lambda: claims_of(client, token, "diego")[0]["status"] == "paid")
    statement = read_statement(Path(app.config["HMS_ACH_SANDBOX_STATEMENT"]))
    assert [(t["claimId"], t["account"]) for t in statement] == [(accepted.json["id"], "****4321")]
    assert [c["id"] for c in claims_of(client, token, "diego")] == [accepted.json["id"]]


def test_claims_filed_while_no_ach_process_runs_are_refused_then_paid_once_it_starts(
    nats: NatsServer, hms_process: Callable[..., HmsProcess]
) -> None:
    env = {**FAST, "HMS_BUS_URL": nats.url}
    web = hms_process({**env, "HMS_SERVICES": "gateway,svc,metrics,notifier,auth"})
    web.start()
    caseworker = {"Authorization": "Bearer " + tokens(web.instance, ["cw"], "caseworker")["cw"]}
    first = tokens(web.instance, ["early"])["early"]
    status, problem = web.request("POST", "/claims", DIEGO, {"Authorization": f"Bearer {first}"})
    assert (status, problem["title"]) == (503, "Service unavailable"), problem
    assert "ach.accounts.register" in problem["detail"]

    citizens = [f"early-{i:03d}" for i in range(40)]
    load = Load(web, citizens)  # patient clients: they retry each 503 with the same Idempotency-Key
    time.sleep(2)
    assert load.accepted == {} and not load.failures
    assert web.request("GET", "/claims", headers=caseworker)[1]["total"] == 0  # no claim decided meanwhile

    worker = hms_process(env, ["worker", "ach"], log="ach.log")
    worker.start()
    load.join(120)
    assert_each_paid_once(web, load.accepted)
    statement = Counter(t["claimId"] for t in read_statement(web.instance / "sandbox-bank.jsonl"))
    assert sorted(statement.values()) == [1] * len(citizens)  # each citizen: exactly one transfer

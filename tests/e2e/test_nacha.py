"""The ACH rail (HMS_ACH_PROVIDER=nacha): payments leave in NACHA files, exactly once, files a bank would take.

Every file is read back by a second, independently written parser (tests/nacha_files.py) and its totals checked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from hms import create_app
from hms.ach.models import AchFile, Payment, PaymentState
from hms.ach.nacha import NachaRail
from hms.runtime import mesh_of
from tests.conftest import DIEGO, eventually
from tests.nacha_files import check_file, drop

NACHA = {
    "HMS_ACH_PROVIDER": "nacha",
    "HMS_ACH_ODFI_ROUTING": "091000019",
    "HMS_ACH_COMPANY_ID": "1234567890",
    "HMS_ACH_COMPANY_NAME": "STATE DOL UI",
    "HMS_ACH_IMMEDIATE_DESTINATION_NAME": "FEDERAL RESERVE BANK",
    "HMS_ACH_FILE_EVERY_S": 1.0,
}
SAVINGS = {"routingNumber": "021000021", "accountNumber": "4444", "accountType": "savings"}


@pytest.fixture
def settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {**settings, **NACHA}


def file_claims(client: Any, token: Any, n: int, prefix: str = "c") -> dict[str, dict[str, Any]]:
    """`n` eligible claims of `n` citizens, every third paid into a savings account; claim id -> bank details."""
    filed = {}
    for i in range(n):
        bank = SAVINGS if i % 3 == 2 else DIEGO["directDeposit"]
        r = client.post("/claims", json={**DIEGO, "directDeposit": bank}, headers=token(f"{prefix}{i}"))
        assert r.status_code == 201, r.json
        filed[r.json["id"]] = bank
    return filed


def notice(code: str, payment: Payment, bank: dict[str, Any], corrected: str = "") -> dict[str, Any]:
    """What the bank says of `payment` (sent into `bank`): a return or a notification of change (tests.nacha_files)."""
    amount = 0 if code.startswith("C") else 60000
    return {
        "code": code,
        "trace": payment.trace_number,
        "routing": bank["routingNumber"],
        "account": bank["accountNumber"],
        "amount": amount,
        "corrected": corrected,
    }


def payments(app: Flask) -> dict[str, Payment]:
    with mesh_of(app).stores["ach"].session() as s:
        return {p.claim_id: p for p in s.scalars(select(Payment))}


def files(app: Flask) -> list[AchFile]:
    with mesh_of(app).stores["ach"].session() as s:
        return list(s.scalars(select(AchFile).order_by(AchFile.id)))


def outbound(app: Flask) -> Path:
    return Path(app.config["HMS_ACH_OUTBOUND_DIR"])


def check_outbound(app: Flask, filed: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every file in the drop passes the bank's checks, and every claim's payment is in exactly one of them, as
    the claim asked (account, type, amount); returns the entries by trace number."""
    assert not list(outbound(app).glob(".*")), "no half-written file is left in the drop"
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted(outbound(app).glob("*.ach")):
        for e in check_file(path, odfi="091000019", company_id="1234567890", company_name="STATE DOL UI"):
            trace = str(e["traceNumber"]).zfill(15)
            assert trace not in entries, f"trace {trace} in two files"
            entries[trace] = {**e, "file": path.name}
    paid = payments(app)
    assert sorted(p.trace_number or "" for p in paid.values()) == sorted(entries)  # nothing else, nothing left out
    for claim_id, bank in filed.items():
        e = entries[paid[claim_id].trace_number or ""]
        assert e["dfiAccount"].strip() == bank["accountNumber"] and e["amount"] == 60000
        assert str(e["transactionCode"]) == ("32" if bank["accountType"] == "savings" else "22")
        assert f"{e['receivingDFIIdentification']:08d}{e['checkDigit']}" == bank["routingNumber"]
    return entries


def test_payments_leave_in_nacha_files_a_bank_would_take_each_once(app: Flask, client: Any, token: Any) -> None:
    filed = file_claims(client, token, 6)
    eventually(lambda: all(p.state == PaymentState.SENT for p in payments(app).values()) and len(payments(app)) == 6)
    more = file_claims(client, token, 5, prefix="later")  # after the first file: in a file of a later cut-off
    eventually(lambda: sum(p.state == PaymentState.SENT for p in payments(app).values()) == 11)
    entries = check_outbound(app, {**filed, **more})
    made = files(app)
    assert len(made) >= 2 and all(f.state == "sent" for f in made)
    assert sum(f.entries for f in made) == 11 and sum(f.total_cents for f in made) == 11 * 60000
    assert [f.file_id_modifier for f in made] == [chr(ord("A") + i) for i in range(len(made))]  # one day's files
    assert sorted(p.name for p in outbound(app).glob("*.ach")) == sorted(f.name for f in made)
    rail: NachaRail = app.extensions["hms.ach"].rail
    for f in made:  # credits settle on the next banking day after the cut-off
        expected = rail.effective_date(f.cutoff_at).strftime("%y%m%d")
        assert {e["effectiveDate"] for e in entries.values() if e["file"] == f.name} == {expected}
    staff = token("casey", "caseworker")
    eventually(lambda: all(client.get(f"/claims/{c}", headers=staff).json["status"] == "paid" for c in filed))
    reconcile = app.test_cli_runner().invoke
    eventually(lambda: "gaps 0, in flight 0" in reconcile(args=["audit", "reconcile", "--strict"]).output)


def test_with_an_offset_account_every_file_is_balanced_by_one_debit(
    settings: dict[str, Any], client: Any, token: Any, app: Flask
) -> None:
    rail = app.extensions["hms.ach"].rail
    rail.offset_account = "987654321"  # as HMS_ACH_OFFSET_ACCOUNT=987654321 would
    rail.origin = "1234567890"  # as HMS_ACH_IMMEDIATE_ORIGIN=1234567890 would
    filed = file_claims(client, token, 4)
    staff = token("casey", "caseworker")
    eventually(lambda: all(client.get(f"/claims/{c}", headers=staff).json["status"] == "paid" for c in filed))
    credits = 0
    for path in outbound(app).glob("*.ach"):
        company = {"company_id": "1234567890", "company_name": "STATE DOL UI"}
        credits += len(check_file(path, odfi="091000019", offset="987654321", origin="1234567890", **company))
    assert credits == 4
    with mesh_of(app).stores["ach"].session() as s:
        offsets = [f.offset_trace for f in s.scalars(select(AchFile))]
    assert all(offsets) and len(set(offsets)) == len(offsets)
    assert not set(offsets) & {p.trace_number for p in payments(app).values()}  # its own trace numbers
    reconcile = app.test_cli_runner().invoke
    eventually(lambda: "gaps 0, in flight 0" in reconcile(args=["audit", "reconcile", "--strict"]).output)


def test_reconcile_finds_an_entry_sent_twice_and_one_no_payment_has(app: Flask, client: Any, token: Any) -> None:
    mesh_of(app).workers["ach.payments"].stop()  # both claims in one file, whatever the clock says
    filed = file_claims(client, token, 2)
    eventually(lambda: len(payments(app)) == 2)
    time.sleep(1.1)  # past the next cut-off (HMS_ACH_FILE_EVERY_S=1)
    assert app.extensions["hms.ach"].rail.run_once() == 2
    staff = token("casey", "caseworker")
    eventually(lambda: all(client.get(f"/claims/{c}", headers=staff).json["status"] == "paid" for c in filed))
    (first,) = outbound(app).glob("*.ach")
    copy = outbound(app) / "COPY.ach"
    copy.write_bytes(first.read_bytes())  # the same entries dropped again, under another name
    lines = first.read_text().split("\n")
    stranger = next(i for i, line in enumerate(lines) if line.startswith("6"))
    lines[stranger] = lines[stranger][:79] + "091000019999999"  # an entry whose trace no payment has
    (outbound(app) / "STRANGER.ach").write_text("\n".join(lines))
    reconciled = app.test_cli_runner().invoke(args=["audit", "reconcile"])
    assert reconciled.exit_code == 1
    # The copy pays both claims again; the stranger file holds one claim's entry a third time, and one unknown.
    gaps = sorted(line.split(": ", 1)[1] for line in reconciled.output.splitlines() if line.startswith("GAP "))
    assert gaps == [
        "paid 2 times at the bank",
        "paid 3 times at the bank",
        "the bank paid a claim for which ach has no payment",
    ], reconciled.output
    assert "GAP trace:091000019999999:" in reconciled.output
    for extra in ("COPY.ach", "STRANGER.ach"):
        (outbound(app) / extra).unlink()
    first.unlink()  # the bank's drop lost the file: both payments are in no file
    lost = app.test_cli_runner().invoke(args=["audit", "reconcile"]).output
    assert lost.count("payment sent but not on the bank's statement") == 2, lost


def test_cutoffs_in_the_banks_time_zone_and_the_next_banking_day(tmp_path: Path) -> None:
    app = create_app({"HMS_INSTANCE_PATH": str(tmp_path), **NACHA, "HMS_ACH_FILE_EVERY_S": 0})
    try:
        rail: NachaRail = app.extensions["hms.ach"].rail
        ny = "10:30,14:45,16:45 New York"
        friday_noon = datetime(2026, 11, 27, 17, 0, tzinfo=UTC)  # 12:00 in New York
        assert rail.last_cutoff(friday_noon) == datetime(2026, 11, 27, 15, 30, tzinfo=UTC), ny
        early_monday = datetime(2026, 11, 30, 13, 0, tzinfo=UTC)  # 08:00 in New York: Friday's last cut-off
        assert rail.last_cutoff(early_monday) == datetime(2026, 11, 27, 21, 45, tzinfo=UTC), ny
        assert rail.effective_date(datetime(2026, 11, 27, 21, 45, tzinfo=UTC)) == date(2026, 11, 30)  # Friday→Monday
        assert rail.effective_date(datetime(2026, 11, 24, 15, 30, tzinfo=UTC)) == date(2026, 11, 25)
        # Federal Reserve holidays: Wednesday before Thanksgiving → Friday; no cut-off on Thanksgiving itself.
        assert rail.effective_date(datetime(2026, 11, 25, 21, 45, tzinfo=UTC)) == date(2026, 11, 27)
        thanksgiving_evening = datetime(2026, 11, 26, 23, 0, tzinfo=UTC)
        assert rail.last_cutoff(thanksgiving_evening) == datetime(2026, 11, 25, 21, 45, tzinfo=UTC)
        assert rail.effective_date(datetime(2026, 12, 24, 21, 45, tzinfo=UTC)) == date(2026, 12, 28)  # Christmas
    finally:
        mesh_of(app).close()


def test_nacha_settings_are_checked_at_start(tmp_path: Path) -> None:
    from hms.config import ConfigError, load

    cases = {
        "HMS_ACH_ODFI_ROUTING": ("091000018", "checksum"),
        "HMS_ACH_COMPANY_ID": ("12345678901", "1 to 10 characters"),
        "HMS_ACH_COMPANY_NAME": ("", "1 to 16 characters"),
        "HMS_ACH_CUTOFFS": ("10:30,25:00", "HH:MM"),
        "HMS_ACH_BANK_TZ": ("Mars/Olympus", "not a time zone"),
        "HMS_ACH_OFFSET_ACCOUNT": ("12", "4 to 17 digits"),
        "HMS_ACH_IMMEDIATE_ORIGIN": ("12345678901", "up to 10"),
        "HMS_ACH_OFFSET_ROUTING": ("12345678", "9 digits"),
        "HMS_ACH_PROVIDER": ("wire", "sandbox or nacha"),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(ConfigError, match=f"{key}: .*{message}"):
            load({**NACHA, key: value}, str(tmp_path))
    ok = load({**NACHA, "HMS_ACH_CUTOFFS": "16:45, 10:30"}, str(tmp_path))
    assert ok["HMS_ACH_CUTOFFS"] == [(10, 30), (16, 45)]


# -- crashes: kill -9 at every step between choosing the entries and recording the file ---------------------------
CRASH = """
import os, signal, sys, threading
from hms.ach import nacha

filed = threading.Event()  # no file is made before every claim is filed
real_run_once = nacha.NachaRail.run_once
def run_once(self, stop=None):
    filed.wait()
    return real_run_once(self, stop)
nacha.NachaRail.run_once = run_once

step = sys.argv[1]
def die(*_, **__):
    os.kill(os.getpid(), signal.SIGKILL)
if step == "chosen":  # the file and its entries recorded; nothing written
    real_choose = nacha.NachaRail.choose
    def choose(self, cutoff):
        chosen = real_choose(self, cutoff)
        if chosen is not None:
            die()
        return chosen
    nacha.NachaRail.choose = choose
elif step == "writing":  # the file on disk under its hidden name, not renamed (this process only)
    nacha.os.fsync = die
elif step == "renamed":  # the file in the drop; not recorded as sent
    nacha.NachaRail.record = lambda self, file_id: die()
elif step == "recording":  # inside the transaction that records it, before the commit
    from hms.runtime import unit
    real_emit = unit.Unit.emit
    def emit(self, subject, *args, **kw):
        return die() if subject == "payment.sent" else real_emit(self, subject, *args, **kw)
    unit.Unit.emit = emit

from hms import create_app
from hms.runtime import mesh_of
from tests.conftest import DIEGO

app = create_app()
mesh_of(app).upgrade()
mesh_of(app).start()
client = app.test_client()
for i in range(8):
    auth = {"Authorization": "Bearer " + app.extensions["hms.auth"].issue(f"crash{i}", "citizen")}
    assert client.post("/claims", json=DIEGO, headers=auth).status_code == 201
filed.set()
import time
time.sleep(60)  # the payments worker dies at the step
"""


@pytest.mark.parametrize("step", ["chosen", "writing", "renamed", "recording"])
def test_a_kill_at_any_step_of_making_a_file_leaves_no_entry_twice_and_no_payment_behind(
    tmp_path: Path, step: str
) -> None:
    env = {
        **os.environ,
        **{k: str(v) for k, v in NACHA.items()},
        "HMS_INSTANCE_PATH": str(tmp_path / "instance"),
        "HMS_ACH_POLL_S": "0.05",
        "HMS_OUTBOX_POLL_S": "0.05",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    started = time.monotonic()
    killed = subprocess.run([sys.executable, "-c", CRASH, step], env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    assert time.monotonic() - started < 60, "the worker reached the step"
    app = create_app(
        {"HMS_INSTANCE_PATH": str(tmp_path / "instance"), **NACHA, "HMS_ACH_POLL_S": 0.05, "HMS_OUTBOX_POLL_S": 0.05}
    )
    mesh = mesh_of(app)
    before = {p.name: p.read_bytes() for p in outbound(app).glob("*.ach")}
    assert bool(before) == (step in ("renamed", "recording"))  # visible only once renamed
    try:
        mesh.upgrade()
        mesh.start()  # the restarted worker finishes the file the crash left building
        eventually(
            lambda: len(payments(app)) == 8 and all(p.state == PaymentState.SENT for p in payments(app).values())
        )
        made = files(app)
        assert all(f.state == "sent" for f in made) and sum(f.entries for f in made) == 8
        for name, content in before.items():  # written again: the same file, byte for byte, under its name
            assert (outbound(app) / name).read_bytes() == content
        check_outbound(app, {claim: DIEGO["directDeposit"] for claim in payments(app)})
        reconcile = app.test_cli_runner().invoke
        eventually(lambda: reconcile(args=["audit", "reconcile", "--strict"]).exit_code == 0)  # and svc knows
    finally:
        mesh.close()


# -- returns and notifications of change ----------------------------------------------------------------------------
def test_returns_and_corrections_come_back_once_and_a_returned_payment_goes_out_again_once(
    app: Flask, client: Any, token: Any
) -> None:
    from hms.ach.models import Account, Notice
    from hms.notifier.models import Notification
    from tests.nacha_files import bank_file

    filed = file_claims(client, token, 3)
    staff = token("casey", "caseworker")
    eventually(lambda: all(client.get(f"/claims/{c}", headers=staff).json["status"] == "paid" for c in filed))
    (a, a_bank), (b, _), (c, _) = filed.items()
    sent = payments(app)
    auditor = token("ann", "auditor")

    def stages() -> dict[str, int]:
        return dict(client.get("/audit/payouts", headers=auditor).json["stages"])

    rail: NachaRail = app.extensions["hms.ach"].rail
    assert rail.settle(today=date(2026, 11, 1)) == 0  # before any effective date: nothing settles
    assert rail.settle(today=date(2099, 1, 1)) == 3 and rail.settle(today=date(2099, 1, 1)) == 0  # once each
    eventually(lambda: stages() == {"submitted": 3, "sent": 3, "settled": 3, "returned": 0})
    stranger = {
        "code": "R02",
        "trace": "091000019999999",
        "routing": "011000015",
        "account": "1234",
        "amount": 100,
        "corrected": "",
    }  # an entry hms never sent
    notices = [notice("R03", sent[a], a_bank), notice("C01", sent[b], filed[b], "55556666"), stranger]
    inbound = Path(app.config["HMS_ACH_INBOUND_DIR"])
    drop(inbound, "RETURNS-1.ach", bank_file("091000019", notices))

    eventually(lambda: client.get(f"/claims/{a}", headers=staff).json["status"] == "returned")
    eventually(lambda: stages() == {"submitted": 3, "sent": 3, "settled": 2, "returned": 1})
    assert payments(app)[a].state == PaymentState.RETURNED and payments(app)[a].return_code == "R03"
    assert client.get(f"/claims/{b}", headers=staff).json["status"] == "paid"  # a NOC returns no money
    ach, notifier = mesh_of(app).stores["ach"], mesh_of(app).stores["notifier"]
    with ach.session() as s:
        assert s.get_one(Account, payments(app)[b].account_id or "").account_number == "55556666"  # next time
        kept = {(n.code, n.payment_id) for n in s.scalars(select(Notice))}
    assert kept == {("R03", sent[a].id), ("C01", sent[b].id), ("R02", None)}  # the stranger is kept, unmatched
    assert not list(inbound.glob("*.ach")) and len(list((inbound / "read").glob("*RETURNS-1.ach"))) == 1

    def told() -> list[str]:
        with notifier.session() as s:
            return [n.message or "" for n in s.scalars(select(Notification).where(Notification.claim_id == a))]

    eventually(lambda: any("sent back" in m for m in told()))
    (message,) = [m for m in told() if m]
    assert "$600.00" in message and "no account" in message and "another account" in message

    # The same file dropped again (another name): read once, applied once.
    drop(inbound, "RETURNS-1-again.ach", bank_file("091000019", notices))
    eventually(lambda: not list(inbound.glob("*.ach")))
    time.sleep(0.3)
    assert len([m for m in told() if m]) == 1

    page = client.get(f"/my/claims/{a}", headers={**token(f"c{0}"), "Accept": "text/html"}).get_data(as_text=True)
    assert "sent the payment back" in page and "Where to pay you instead" in page
    case = client.get(f"/caseworker/claims/{a}", headers={**staff, "Accept": "text/html"}).get_data(as_text=True)
    assert "R03" in case and "No account" in case
    notices = case[case.index('<ul id="notices">') :]
    assert notices.startswith('<ul id="notices"><li><strong>R03</strong> No account / unable to locate account <time')
    bus, gateway = mesh_of(app).bus, mesh_of(app).credentials("gateway")  # as the gateway asks
    got = bus.request("ach.payments.get", {"claimId": a}, 5, headers=gateway)
    assert (got["state"], got["returnCode"]) == ("returned", "R03")
    assert [(n["code"], n["detail"]) for n in got["notices"]] == [("R03", "No account / unable to locate account")]
    assert got["notices"][0]["receivedAt"].endswith("Z")
    corrected = bus.request("ach.payments.get", {"claimId": b}, 5, headers=gateway)
    assert corrected["returnCode"] is None and corrected["account"] == "****6666"
    assert [(n["code"], n["detail"]) for n in corrected["notices"]] == [
        ("C01", "Incorrect DFI account number: account corrected for the next payment")
    ]

    citizen = token("c0")
    refused = client.put(f"/claims/{b}/direct-deposit", json=SAVINGS, headers=token("c1"))
    assert refused.status_code == 409  # b's payment did not come back
    bad = client.put(f"/claims/{a}/direct-deposit", json={**SAVINGS, "routingNumber": "021000022"}, headers=citizen)
    assert bad.status_code == 422 and "routingNumber" in str(bad.json), bad.json  # the checksum: nothing changes
    assert client.put(f"/claims/{a}/direct-deposit", json=SAVINGS, headers=token("c1")).status_code == 404
    again = client.put(f"/claims/{a}/direct-deposit", json=SAVINGS, headers=citizen)
    assert again.status_code == 200 and again.json["account"] == "****4444", again.json
    assert client.put(f"/claims/{a}/direct-deposit", json=SAVINGS, headers=citizen).status_code == 409  # once

    eventually(lambda: client.get(f"/claims/{a}", headers=staff).json["status"] == "paid")
    eventually(lambda: stages() == {"submitted": 3, "sent": 3, "settled": 2, "returned": 0})  # a's not settled yet
    audit = client.get("/audit", headers={**auditor, "Accept": "text/html"}).get_data(as_text=True)
    assert "<td>3</td><td>3</td><td>2</td><td>0</td>" in audit
    entries = [
        e
        for path in sorted(outbound(app).glob("*.ach"))
        for e in check_file(path, odfi="091000019", company_id="1234567890", company_name="STATE DOL UI")
    ]
    for_a = [e for e in entries if e["identificationNumber"].strip() == a.replace("-", "")[:15].upper()]
    assert len(for_a) == 2  # the returned entry and the one sent again, nothing more
    assert [(e["dfiAccount"].strip(), str(e["transactionCode"])) for e in for_a][1] == ("4444", "32")
    assert payments(app)[a].trace_number != sent[a].trace_number
    reconcile = app.test_cli_runner().invoke
    eventually(lambda: "gaps 0, in flight 0" in reconcile(args=["audit", "reconcile", "--strict"]).output)
    timeline = [t["status"] for t in client.get(f"/claims/{a}", headers=staff).json["timeline"]]
    assert timeline == ["submitted", "approved", "paid", "returned", "paid"]


def test_a_file_that_is_not_nacha_is_set_aside_and_read_once(app: Flask) -> None:
    from hms.ach.models import InboundFile

    inbound = Path(app.config["HMS_ACH_INBOUND_DIR"])
    (inbound / "junk.txt").write_text("hello\n")
    eventually(lambda: (inbound / "read").exists() and list((inbound / "read").glob("*junk.txt")))
    with mesh_of(app).stores["ach"].session() as s:
        (row,) = s.scalars(select(InboundFile))
    assert row.notices == 0 and row.error and "94" in row.error


def test_a_citizen_gives_other_bank_details_on_the_claims_page(
    app: Flask, client: Any, token: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wrong details are refused by field; while ach cannot take them (down: 503, slow: 504) the form comes back as
    typed with the reason; then they are taken once, and the payment goes out again."""
    import re

    import hms.gateway.api as api
    from hms.bus import BusTimeout, NoResponders
    from tests.nacha_files import bank_file

    claim = client.post("/claims", json=DIEGO, headers=token("diego")).json["id"]
    eventually(lambda: payments(app).get(claim) and payments(app)[claim].state == PaymentState.SENT)
    closed = notice("R02", payments(app)[claim], DIEGO["directDeposit"])
    drop(Path(app.config["HMS_ACH_INBOUND_DIR"]), "R.ach", bank_file("091000019", [closed]))
    eventually(lambda: payments(app)[claim].state == PaymentState.RETURNED)
    eventually(lambda: client.get(f"/claims/{claim}", headers=token("diego")).json["status"] == "returned")

    app.config["HMS_DEMO"] = True  # a browser session: the demo sign-in, as Diego
    web = app.test_client()
    signin = web.get("/signin").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', signin).group(1)  # type: ignore[union-attr]
    assert web.post("/signin", data={"csrf": csrf, "identity": "diego:citizen"}).status_code == 303
    page = web.get(f"/my/claims/{claim}").get_data(as_text=True)
    assert "it could not pay it into that account" in page and "Where to pay you instead" in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    form = {"csrf": csrf, "routingNumber": "021000022", "accountNumber": "4444", "accountType": "savings"}
    wrong = web.post(f"/my/claims/{claim}/direct-deposit", data=form)
    assert wrong.status_code == 422 and "check digit is wrong" in wrong.get_data(as_text=True)
    assert payments(app)[claim].state == PaymentState.RETURNED  # nothing changed
    real_send = api.send
    right = {**form, "routingNumber": "021000021"}
    for failure, status, wait, reason in (
        (NoResponders("ach.payments.reissue"), 503, "5", "Service unavailable: nothing serves ach.payments.reissue"),
        (BusTimeout("ach.payments.reissue", 5.0), 504, None, "Service timeout: no reply on &#39;ach.payments.reissue"),
    ):

        def send(subject: str, data: dict[str, Any], version: int = 1, failure: Exception = failure) -> Any:
            if subject == "ach.payments.reissue":
                raise failure  # what the bus raises when no ach process runs, or none answers in time
            return real_send(subject, data, version)

        monkeypatch.setattr(api, "send", send)
        away = web.post(f"/my/claims/{claim}/direct-deposit", data=right)
        text = away.get_data(as_text=True)
        assert (away.status_code, away.headers.get("Retry-After")) == (status, wait) and reason in text, text
        assert 'value="021000021"' in text and 'value="4444"' in text and '<option value="savings" selected>' in text
        monkeypatch.undo()
    assert payments(app)[claim].state == PaymentState.RETURNED  # nothing changed
    done = web.post(f"/my/claims/{claim}/direct-deposit", data=right)
    assert done.status_code == 303 and done.headers["Location"].endswith(f"/my/claims/{claim}")
    after = web.get(done.headers["Location"]).get_data(as_text=True)
    assert "the next batch of payments" in after and "Where to pay you instead" not in after  # no second form
    twice = web.post(f"/my/claims/{claim}/direct-deposit", data={**form, "routingNumber": "021000021"})
    assert twice.status_code == 422 and "not returned for its account" in twice.get_data(as_text=True)
    eventually(lambda: client.get(f"/claims/{claim}", headers=token("diego")).json["status"] == "paid")
    assert payments(app)[claim].trace_number != closed["trace"]


def test_several_ach_workers_make_each_file_and_read_each_return_once(app: Flask, client: Any, token: Any) -> None:
    """Rails of several processes on one database race for the same cut-off, the same file and the same return
    file (on PostgreSQL they truly run at once): one file, one payment.sent and one return per payment."""
    import threading

    from hms.ach.models import Notice
    from hms.notifier.models import Notification
    from tests.nacha_files import bank_file

    ach = app.extensions["hms.ach"]
    rails = [NachaRail(app.config, mesh_of(app).stores["ach"].session) for _ in range(3)]

    def race(step: Any) -> None:
        start = threading.Barrier(len(rails))

        def run(rail: NachaRail) -> None:
            start.wait()
            step(rail)

        threads = [threading.Thread(target=run, args=(r,)) for r in rails]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

    mesh_of(app).workers["ach.payments"].stop()  # only the racing rails make files
    filed = file_claims(client, token, 6)
    eventually(lambda: len(payments(app)) == 6)
    time.sleep(1.1)  # past the next cut-off (HMS_ACH_FILE_EVERY_S=1): all six are due in one file
    race(lambda rail: rail.run_once())
    assert len(files(app)) == 1
    eventually(lambda: all(p.state == PaymentState.SENT for p in payments(app).values()))
    check_outbound(app, filed)

    def told(kind: str) -> list[str]:
        with mesh_of(app).stores["notifier"].session() as s:
            return [n.claim_id for n in s.scalars(select(Notification).where(Notification.kind == kind))]

    eventually(lambda: len(told("payment.sent")) >= 6)
    time.sleep(0.3)
    assert sorted(told("payment.sent")) == sorted(filed)  # one payment.sent per payment

    a = next(iter(filed))
    back = notice("R03", payments(app)[a], filed[a])
    drop(ach.rail.inbound, "R.ach", bank_file("091000019", [back]))
    race(lambda rail: rail.read_inbound())
    assert not list(ach.rail.inbound.glob("*.ach"))
    eventually(lambda: told("payment.returned") == [a])
    with mesh_of(app).stores["ach"].session() as s:
        assert [n.code for n in s.scalars(select(Notice))] == ["R03"]

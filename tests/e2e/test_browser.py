"""The web UI in a real headless Chromium (Debian's, through Playwright; nothing downloads a browser)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from hms.bus import Event
from hms.runtime import Mesh
from tests.conftest import eventually
from tests.e2e.browser import Watched, chromium, fill_claim


@pytest.fixture(params=["memory"])
def database_url(request: pytest.FixtureRequest) -> str:
    return ""  # the pages are the subject here: SQLite is enough (the API tests run on PostgreSQL too)


@pytest.fixture
def settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {**settings, "HMS_DEMO": True}


@pytest.fixture
def server(app: Flask) -> Iterator[str]:
    """The app on a real HTTP port (loopback)."""
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


@pytest.fixture
def browser(server: str) -> Iterator[Watched]:
    """Chromium; it asks for the server so that it closes first: a page still loading must not meet a server gone
    away."""
    with chromium() as watched:
        yield watched


def sign_in(browser: Any, server: str, identity: str) -> Any:
    page = browser.new_page()
    page.goto(server + "/signin")
    page.get_by_label(identity).check()
    with page.expect_navigation():  # the next page is loaded, not just asked for, before a test looks at it
        page.get_by_role("button", name="Sign in").click()
    return page


def test_a_citizen_files_a_claim_and_watches_it_reach_paid(
    browser: Any, server: str, app: Flask, tmp_path: Path
) -> None:
    outage = tmp_path / "bank-down"
    outage.touch()  # hold the payment so the page shows "approved" first, then goes live to "paid"
    app.extensions["hms.ach"].bank.outage_file = outage
    page = sign_in(browser, server, "Diego Ramos, citizen")
    fill_claim(page)
    page.get_by_label("Why did the job end?").select_option("laid_off")
    page.get_by_role("button", name="File claim").click()
    status = page.locator("#status")
    assert status.text_content() == "approved"
    outage.unlink()
    from playwright.sync_api import expect

    expect(status).to_have_text("paid", timeout=20_000)  # the script updates it in place (the CSP forbids eval)
    assert "has been sent to your bank" in page.locator("#explain").inner_text()
    assert page.locator("#timeline li").count() == 3  # updated in place, without a reload


def test_a_denied_claim_shows_its_reasons_in_plain_words(browser: Any, server: str) -> None:
    page = sign_in(browser, server, "Rosa Lind, citizen")
    fill_claim(page, **{"Weeks worked in the last year": "5"})
    page.get_by_label("Why did the job end?").select_option("quit")
    page.get_by_role("button", name="File claim").click()
    assert page.locator("#status").text_content() == "denied"
    reasons = page.locator("#reasons li").all_inner_texts()
    assert any("does not qualify" in r for r in reasons) and any("fewer than 20 weeks" in r for r in reasons)


def test_a_bad_form_is_shown_again_with_the_field_named(browser: Any, server: str) -> None:
    browser.allowed.append("422")  # the form comes back as 422 Unprocessable Content, on purpose
    page = sign_in(browser, server, "Diego Ramos, citizen")
    fill_claim(page, **{"Bank routing number": "011000016", "Full name": "", "Account number": "12 34"})
    page.get_by_role("button", name="File claim").click()
    field = page.get_by_label("Bank routing number")
    assert field.get_attribute("aria-invalid") == "true"
    assert page.locator("#routingNumber-error").inner_text() == (
        "That routing number does not exist (its check digit is wrong): check the 9 digits on your check."
    )
    # One voice: each message says what to do, in the form's words, not the validator's.
    assert page.locator("#name-error").inner_text() == "Enter your full name."
    assert page.locator("#accountNumber-error").inner_text() == "Enter your account number: 4 to 17 digits, no spaces."
    assert "Please correct 3 fields below." in page.locator(".error-summary").inner_text()
    assert field.input_value() == "011000016"  # nothing typed is lost


def test_a_caseworker_replays_a_dead_letter(
    browser: Any, server: str, app: Flask, mesh: Mesh, client: Any, token: Any, tmp_path: Path
) -> None:
    outage = tmp_path / "bank-down"
    outage.touch()
    app.extensions["hms.ach"].bank.outage_file = outage
    claim = client.post("/claims", json={**_diego(), "claimant": {**_diego()["claimant"]}}, headers=token("diego")).json
    # svc gave up on this payment.sent earlier (as the bus does after the last retry): a dead letter.
    event = Event.create(
        "payment.sent",
        {
            "claimId": claim["id"],
            "paymentId": "p-1",
            "citizen": "diego",
            "amount": 600,
            "sentAt": "2026-11-27T10:00:00Z",
        },
        source="/hms/ach",
    )
    mesh.stores["svc"].dead.store("svc.on_payment_sent", event, "OperationalError: database is locked")
    page = sign_in(browser, server, "Casey, caseworker")
    assert page.get_by_role("cell", name="svc.on_payment_sent").count() == 1
    page.get_by_role("button", name="Replay dead letter svc:1").click()
    assert "Replayed svc:1: handled." in page.locator(".notice").inner_text()
    assert page.get_by_text("No dead letters.").is_visible()
    assert client.get(f"/claims/{claim['id']}", headers=token("diego")).json["status"] == "paid"


def test_an_auditor_downloads_the_csv(browser: Any, server: str, client: Any, token: Any) -> None:
    claim = client.post("/claims", json=_diego(), headers=token("diego")).json
    eventually(lambda: client.get(f"/claims/{claim['id']}", headers=token("diego")).json["status"] == "paid")
    eventually(lambda: client.get("/audit/payouts", headers=token("ann", "auditor")).json["count"] == 1)
    page = sign_in(browser, server, "Ann, auditor")
    assert page.locator("#count").inner_text() == "1"
    assert page.locator("figure svg").count() == 2  # histogram and by-day chart, drawn by the server
    by_day = page.locator("figure svg").nth(1)
    assert by_day.locator("circle").count() == 2  # one day: a p50 and a p99 dot, not two giant bars
    labels = by_day.locator("text").all_text_contents()
    assert "0 s" in labels and sum(t.endswith(" s") for t in labels) >= 7  # y axis values and the two values
    with page.expect_download() as info:
        page.get_by_role("link", name="Download CSV").click()
    csv = Path(info.value.path()).read_text().splitlines()
    assert csv[0] == "day,count,p50_s,p90_s,p99_s,max_s" and csv[-1].startswith("all,1,")


def test_a_caseworker_sees_the_whole_case(browser: Any, server: str, client: Any, token: Any) -> None:
    claim = client.post("/claims", json=_diego(), headers=token("diego")).json
    eventually(lambda: client.get(f"/claims/{claim['id']}", headers=token("diego")).json["status"] == "paid")
    page = sign_in(browser, server, "Casey, caseworker")
    reference = claim["id"].replace("-", "").upper()[:12]
    reference = "-".join(reference[i : i + 4] for i in (0, 4, 8))
    page.get_by_role("link", name=reference).click()
    assert page.locator("h1").inner_text() == f"Claim {reference}"
    claimant, job = page.locator("#claimant").inner_text(), page.locator("#job").inner_text()
    assert "Diego Ramos" in claimant and "diego@example.org" in claimant and "***-**-1234" in claimant
    assert "Acme Corp" in job and "Laid off" in job and "40" in job and "$31,200.00" in job
    payment = page.locator("#payment").text_content()
    assert "sent" in payment and "****6789 (checking)" in payment and "SBX-" in payment
    assert page.locator("#timeline li").count() == 3
    assert "Your claim" not in page.content()  # staff wording, not the citizen's
    page.get_by_role("navigation", name="Staff").get_by_role("link", name="Dead letters").click()
    assert page.url.endswith("/caseworker#dead-letters")


def test_a_duplicate_claim_links_the_claim_it_duplicates(browser: Any, server: str, client: Any, token: Any) -> None:
    first = client.post("/claims", json=_diego(), headers=token("diego")).json  # filed with curl first
    page = sign_in(browser, server, "Diego Ramos, citizen")
    fill_claim(page)
    page.get_by_label("Why did the job end?").select_option("laid_off")
    page.get_by_role("button", name="File claim").click()
    assert page.locator("#status").text_content() == "denied"
    reason = page.locator('#reasons li[data-code="DUPLICATE_CLAIM"]')
    assert "already have an approved or paid claim" in reason.inner_text()
    reason.get_by_role("link").click()
    assert first["id"] in page.url and page.locator("#status").text_content() in ("approved", "paid")


def test_every_page_has_an_icon(client: Any) -> None:
    with client.get("/favicon.ico") as r:
        assert r.status_code == 200 and r.mimetype == "image/svg+xml" and b"<svg" in r.data


def test_no_sign_in_page_outside_demo_mode(app: Flask, client: Any) -> None:
    app.config["HMS_DEMO"] = False
    assert client.get("/signin").status_code == 404
    assert "Sign in to file" not in client.get("/").text


def _diego() -> dict[str, Any]:
    from tests.conftest import DIEGO

    return DIEGO


def test_a_claim_refused_for_now_comes_back_as_the_form_filled_in(
    browser: Any, server: str, app: Flask, client: Any
) -> None:
    """The rate limit refuses the claim (as a service down or slow would): the page is the form again, with the
    reason, everything typed and the same Idempotency-Key, so that sending it again files the claim once at most."""
    from tests.conftest import DIEGO

    bearer = {"Authorization": "Bearer " + app.extensions["hms.auth"].issue("diego", "citizen")}
    for i in range(app.config["HMS_CLAIMS_PER_MINUTE"]):  # the citizen's minute is used up through the API
        assert client.post("/claims", json=DIEGO, headers={**bearer, "Idempotency-Key": f"api-{i}"}).status_code == 201
    browser.allowed.append("429")  # the form comes back as 429 Too Many Requests, on purpose
    page = sign_in(browser, server, "Diego Ramos, citizen")
    fill_claim(page, Employer="Globex")
    page.get_by_label("Why did the job end?").select_option("reduced_hours")
    key = page.locator("input[name=idempotencyKey]").input_value()
    with page.expect_navigation():
        page.get_by_role("button", name="File claim").click()
    summary = page.locator(".error-summary").inner_text()
    assert "Too many requests: too many claims submitted; try again later." in summary
    assert page.get_by_label("Employer", exact=True).input_value() == "Globex"
    assert page.get_by_label("Why did the job end?").input_value() == "reduced_hours"
    assert page.locator("input[name=idempotencyKey]").input_value() == key
    assert page.locator("table tbody tr").count() == app.config["HMS_CLAIMS_PER_MINUTE"]  # theirs, still listed
    total = client.get("/claims?pageSize=1", headers=bearer).json["total"]
    assert total == app.config["HMS_CLAIMS_PER_MINUTE"]  # the refused one was not filed


def test_a_claim_no_service_can_take_comes_back_as_the_form_filled_in(settings: dict[str, Any]) -> None:
    """A gateway whose services are not running (nothing on the bus serves ach or svc): 503 with the form as typed
    and a page that says the citizen's claims cannot be shown now, not that they have none."""
    from tests.conftest import running
    from tests.e2e.test_security import signed_in

    with running({**settings, "HMS_SERVICES": "gateway,auth"}) as alone:
        client = alone.test_client()
        csrf = signed_in(alone, client)
        form = {"csrf": csrf, "name": "Diego Ramos", "ssnLast4": "1234", "email": "diego@example.org"}
        form |= {"employer": "Acme Corp", "separationReason": "laid_off", "weeksWorked": "40", "baseWages": "31200"}
        form |= {"routingNumber": "011000015", "accountNumber": "000123456789", "accountType": "savings"}
        answer = client.post("/claims/new", data={**form, "idempotencyKey": "form-1"}, headers={"Accept": "text/html"})
        html = answer.get_data(as_text=True)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
        assert "Service unavailable: nothing serves ach.accounts.register right now." in html
        assert "Your claims cannot be shown right now." in html and "You have not filed a claim yet." not in html
        assert 'value="form-1"' in html and 'value="Diego Ramos"' in html and 'value="savings" selected' in html

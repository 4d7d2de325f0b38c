"""Browser sign-in at a real, independently written OpenID Provider (panva/oidc-provider from npm, run with Node.js).

The provider requires PKCE of every client; its own development login page takes any name and password ("casey" is
staff, "nobody" has no role, anyone else is a citizen) and asks for consent. hms signs in with client_secret_basic
or private_key_jwt, reads the roles from the userinfo response, and ends the provider's session on sign-out.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server

from hms.gateway.signin import public_jwks
from hms.runtime import mesh_of
from tests.e2e.browser import Watched, chromium, fill_claim
from tests.e2e.test_identity_provider import Provider, mesh_trusting, private_jwk
from tests.natsd import free_port


class Site:
    """hms on a real HTTP port, signing people in at `provider`."""

    def __init__(self, provider: Provider, tmp_path: Path, client: str, **settings: Any) -> None:
        self.provider, port = provider, free_port()
        self.url = f"http://127.0.0.1:{port}"
        pem = RSAKey.generate_key(2048).as_pem(private=True)
        (tmp_path / "client.pem").write_bytes(pem)
        provider.start([private_jwk("k1")], web=self.url, client_jwks=public_jwks(pem))
        auth = (
            {"HMS_OIDC_CLIENT_KEY_FILE": str(tmp_path / "client.pem")}
            if client == "hms-web-jwt"
            else {"HMS_OIDC_CLIENT_SECRET": "web-secret"}
        )
        self.app: Flask = mesh_trusting(
            provider,
            tmp_path,
            HMS_OIDC_ISSUER=provider.issuer,
            HMS_OIDC_CLIENT_ID=client,
            HMS_OIDC_SCOPES="openid profile roles",
            **auth,
            **settings,
        )
        self.httpd = make_server("127.0.0.1", port, self.app, threaded=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        mesh_of(self.app).close()


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[Provider]:
    p = Provider(tmp_path)
    yield p
    p.stop()


@pytest.fixture(params=["hms-web", "hms-web-jwt"])
def site(request: pytest.FixtureRequest, provider: Provider, tmp_path: Path) -> Iterator[Site]:
    """client_secret_basic (hms-web) and private_key_jwt (hms-web-jwt)."""
    s = Site(provider, tmp_path, request.param)
    yield s
    s.close()


@pytest.fixture
def browser(site: Site) -> Iterator[Watched]:
    with chromium() as watched:
        # The provider's own pages ask for a web font (no network here) and an icon it does not have.
        watched.allowed += ["fonts.googleapis.com", site.provider.issuer + "/favicon.ico"]
        yield watched


def sign_in_at_provider(page: Any, site: Site, login: str) -> None:
    """On the provider's login page: any password; then its consent page."""
    page.wait_for_url(site.provider.issuer + "/interaction/**")
    page.locator("input[name=login]").fill(login)
    page.locator("input[name=password]").fill("any password")
    page.get_by_role("button", name="Sign-in").click()
    page.get_by_role("button", name="Continue").click()


def test_a_citizen_signs_in_at_the_provider_files_a_claim_sees_it_paid_and_signs_out(
    site: Site, browser: Watched
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(site.url + "/")
    page.get_by_role("link", name="Sign in to file a claim").click()
    sign_in_at_provider(page, site, "maria")
    page.wait_for_url(site.url + "/")
    expect(page.locator("h1")).to_have_text("Your claims")
    assert "Signed in as maria (citizen)" in page.get_by_role("navigation", name="Account").inner_text()
    fill_claim(page)
    page.get_by_label("Why did the job end?").select_option("laid_off")
    page.get_by_role("button", name="File claim").click()
    expect(page.locator("#status")).to_have_text("paid", timeout=20_000)

    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Yes, sign me out").click()  # the provider's end_session page
    page.wait_for_url(site.url + "/**")
    expect(page.get_by_role("link", name="Sign in to file a claim")).to_be_visible()
    # The provider's session ended too: signing in again asks for the login, not straight back in.
    page.get_by_role("link", name="Sign in to file a claim").click()
    page.wait_for_url(site.provider.issuer + "/interaction/**")
    expect(page.locator("input[name=login]")).to_be_visible()


def test_a_staff_member_signs_in_and_sees_the_caseworker_page(site: Site, browser: Watched) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(site.url + "/caseworker")  # not signed in: off to sign in, and back here after
    sign_in_at_provider(page, site, "casey")
    page.wait_for_url(site.url + "/caseworker")
    expect(page.locator("h1")).to_have_text("Caseworker")
    assert "Signed in as casey (caseworker)" in page.get_by_role("navigation", name="Account").inner_text()


def test_a_person_with_no_role_is_told_so(site: Site, browser: Watched) -> None:
    from playwright.sync_api import expect

    browser.allowed.append("403")
    page = browser.new_page()
    page.goto(site.url + "/signin")
    sign_in_at_provider(page, site, "nobody")
    expect(page.locator("main")).to_contain_text("your account has no role in this service")
    home = browser.new_page()  # the same browser (its cookies); the first page may still be fetching its icon
    home.goto(site.url + "/")
    expect(home.get_by_role("link", name="Sign in to file a claim")).to_be_visible()  # no session was made


@pytest.mark.parametrize("site", ["hms-web"], indirect=True)
def test_the_authorization_request_uses_pkce_state_and_nonce(site: Site) -> None:
    client = site.app.test_client()
    r = client.get("/signin?next=/caseworker")
    assert r.status_code == 302
    where = urlsplit(r.headers["Location"])
    query = {k: v[0] for k, v in parse_qs(where.query).items()}
    assert f"{where.scheme}://{where.netloc}" == site.provider.issuer
    assert query["response_type"] == "code" and query["client_id"] == "hms-web"
    assert query["redirect_uri"] == "http://localhost/signin/callback" and query["scope"] == "openid profile roles"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 20 and len(query["nonce"]) >= 20
    again = {k: v[0] for k, v in parse_qs(urlsplit(client.get("/signin").headers["Location"]).query).items()}
    assert again["state"] != query["state"] and again["nonce"] != query["nonce"]
    # A callback whose state this browser was not given is refused, and signs nobody in.
    forged = client.get("/signin/callback?code=abc&state=not-mine", headers={"Accept": "text/html"})
    assert forged.status_code == 401 and "sign-in failed" in forged.get_data(as_text=True)
    assert client.get("/caseworker").status_code == 302
    refused = client.get(
        f"/signin/callback?error=access_denied&state={again['state']}", headers={"Accept": "text/html"}
    )
    assert refused.status_code == 401 and "access_denied" in refused.get_data(as_text=True)


@pytest.mark.parametrize("site", ["hms-web"], indirect=True)
def test_an_id_token_below_the_required_assurance_level_signs_nobody_in(site: Site, browser: Watched) -> None:
    from playwright.sync_api import expect

    site.app.config["HMS_OIDC_ACR_VALUES"] = ["urn:hms:loa:1"]  # asked for; this provider's dev login sets no acr
    browser.allowed.append("401")
    assert "acr_values=urn%3Ahms%3Aloa%3A1" in site.app.test_client().get("/signin").headers["Location"]
    page = browser.new_page()
    page.goto(site.url + "/signin")
    sign_in_at_provider(page, site, "maria")
    expect(page.locator("main")).to_contain_text("this service needs urn:hms:loa:1")


def test_sign_in_settings_are_checked_at_start(tmp_path: Path) -> None:
    from hms.config import ConfigError, load

    base = {"HMS_OIDC_ISSUER": "https://idp.example", "HMS_OIDC_CLIENT_ID": "hms"}
    with pytest.raises(ConfigError, match="HMS_OIDC_ISSUER: expected the OpenID Provider's issuer URL over https"):
        load({**base, "HMS_OIDC_ISSUER": "http://idp.example", "HMS_OIDC_CLIENT_SECRET": "s"}, str(tmp_path))
    with pytest.raises(ConfigError, match="HMS_OIDC_CLIENT_ID: required"):
        load({**base, "HMS_OIDC_CLIENT_ID": "", "HMS_OIDC_CLIENT_SECRET": "s"}, str(tmp_path))
    with pytest.raises(ConfigError, match="set exactly one"):
        load(base, str(tmp_path))
    with pytest.raises(ConfigError, match="HMS_OIDC_CLIENT_KEY_FILE: no such file"):
        load({**base, "HMS_OIDC_CLIENT_KEY_FILE": str(tmp_path / "missing.pem")}, str(tmp_path))
    with pytest.raises(ConfigError, match="HMS_OIDC_SCOPES: must include openid"):
        load({**base, "HMS_OIDC_CLIENT_SECRET": "s", "HMS_OIDC_SCOPES": "profile"}, str(tmp_path))
    with pytest.raises(ConfigError, match="HMS_OIDC_DEFAULT_ROLE"):
        load({"HMS_OIDC_DEFAULT_ROLE": "superuser"}, str(tmp_path))
    ok = load({**base, "HMS_OIDC_CLIENT_SECRET": "s", "HMS_OIDC_SCOPES": "openid profile, roles"}, str(tmp_path))
    assert ok["HMS_OIDC_SCOPES"] == ["openid", "profile", "roles"]


def test_the_client_key_is_checked_at_start_and_its_public_jwks_printed_for_the_provider(tmp_path: Path) -> None:
    from hms import create_app
    from hms.config import ConfigError

    pem = RSAKey.generate_key(2048).as_pem(private=True)
    (tmp_path / "client.pem").write_bytes(pem)
    (tmp_path / "bad.pem").write_text("not a key")
    base = {
        "HMS_INSTANCE_PATH": str(tmp_path / "i"),
        "HMS_OIDC_ISSUER": "https://idp.example",
        "HMS_OIDC_CLIENT_ID": "x",
    }
    with pytest.raises(ConfigError, match="HMS_OIDC_CLIENT_KEY_FILE: not an RSA private key in PEM"):
        create_app({**base, "HMS_OIDC_CLIENT_KEY_FILE": str(tmp_path / "bad.pem")})
    app = create_app({**base, "HMS_OIDC_CLIENT_KEY_FILE": str(tmp_path / "client.pem")})
    try:
        printed = app.test_cli_runner().invoke(args=["oidc", "client-jwks"])
        assert printed.exit_code == 0, printed.output
        (key,) = json.loads(printed.output)["keys"]
        assert "d" not in key and "p" not in key  # the public part only
        assert key["kid"] == RSAKey.import_key(pem).thumbprint() and key["alg"] == "RS256"
        public = RSAKey.import_key(pem).as_dict(private=False)
        assert (key["n"], key["e"]) == (public["n"], public["e"])
        bad = app.test_cli_runner().invoke(args=["oidc", "client-jwks", str(tmp_path / "bad.pem")])
        assert bad.exit_code == 2 and "bad.pem: not an RSA private key in PEM" in bad.output
    finally:
        mesh_of(app).close()

"""Configuration: defaults, then HMS_* environment variables, then the caller's mapping."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hms.contracts.vocabulary import ROLES, account_number_problem, routing_number_problem

ALL_SERVICES = ("gateway", "svc", "ach", "metrics", "notifier", "auth")

DEFAULTS: dict[str, Any] = {
    "HMS_BUS_URL": "memory://",
    "HMS_NATS_STREAM": "HMS_EVENTS",
    "HMS_NATS_EVENT_SUBJECTS": ["claim.>", "payment.>"],
    "HMS_NATS_ACK_WAIT_S": 30.0,
    "HMS_NATS_CONNECT_TIMEOUT_S": 10.0,
    "HMS_NATS_REPLICAS": 1,  # replicas of the event stream when hms creates it (3 on a 3-node cluster)
    "HMS_DATABASE_URL": "",
    "HMS_SERVICES": list(ALL_SERVICES),
    "HMS_START": False,
    "HMS_DEMO": False,
    "HMS_JWT_ISSUER": "hms-dev",
    "HMS_JWT_AUDIENCE": "hms",
    "HMS_JWT_JWKS_FILE": "",
    "HMS_JWT_JWKS_URL": "",  # an identity provider's JWKS URL, or "discover" (its issuer's discovery document)
    "HMS_JWT_TYPES": ["at+jwt"],  # accepted header typ values (Keycloak, Entra ID, Auth0: JWT)
    "HMS_JWT_ROLES_CLAIM": "role",  # a dotted path to a string or list claim, e.g. realm_access.roles
    "HMS_JWT_ROLE_MAP": [],  # provider-role=hms-role,...
    "HMS_JWT_PRIVATE_KEY_FILE": "",
    "HMS_SECRET_KEY": "",  # signs web sessions; every gateway of a mesh needs the same (default: instance file)
    "HMS_OIDC_ISSUER": "",  # browser sign-in at this OpenID Provider (its discovery document)
    "HMS_OIDC_CLIENT_ID": "",
    "HMS_OIDC_CLIENT_SECRET": "",  # client_secret_basic, or:
    "HMS_OIDC_CLIENT_KEY_FILE": "",  # private_key_jwt: an RSA private key (PEM)
    "HMS_OIDC_SCOPES": ["openid"],
    "HMS_OIDC_ACR_VALUES": [],  # asked for, and required of the ID token's acr
    "HMS_OIDC_DEFAULT_ROLE": "",  # the role of a person whose claims grant none (e.g. citizen at Login.gov)
    "HMS_JWT_TTL_S": 3600,
    "HMS_SYS_AUTH": True,
    "HMS_SERVICE_TOKEN_TTL_S": 900,
    "HMS_RULES_FILE": "",
    "HMS_REQUEST_TIMEOUT_S": 5.0,
    "HMS_OUTBOX_POLL_S": 1.0,
    "HMS_BUS_MAX_DELIVER": 5,
    "HMS_INBOX_RETENTION_DAYS": 30.0,
    "HMS_IDEMPOTENCY_RETENTION_DAYS": 30.0,
    "HMS_BUS_BACKOFF_S": [0.5, 2.0, 10.0, 30.0],
    "HMS_ACH_PROVIDER": "sandbox",
    "HMS_ACH_SANDBOX_STATEMENT": "",
    "HMS_ACH_SANDBOX_LATENCY_MS": 0,
    "HMS_ACH_SANDBOX_FAIL_RATE": 0.0,
    "HMS_ACH_SANDBOX_OUTAGE_FILE": "",
    # The nacha provider (HMS_ACH_PROVIDER=nacha, docs/payments.md): NACHA files for the bank's drop folder.
    "HMS_ACH_ODFI_ROUTING": "",  # the agency's bank (originating DFI), 9 digits
    "HMS_ACH_COMPANY_ID": "",  # the company identification the bank gave the agency (10 characters)
    "HMS_ACH_COMPANY_NAME": "",  # up to 16 characters, on the citizen's bank statement
    "HMS_ACH_ENTRY_DESCRIPTION": "BENEFITS",  # company entry description, up to 10 characters
    "HMS_ACH_IMMEDIATE_DESTINATION": "",  # routing number the files are addressed to (default: the ODFI)
    "HMS_ACH_IMMEDIATE_DESTINATION_NAME": "",
    "HMS_ACH_IMMEDIATE_ORIGIN": "",  # 10 characters the bank gave for the file header (default: " " + the ODFI)
    "HMS_ACH_IMMEDIATE_ORIGIN_NAME": "",  # default: the company name
    "HMS_ACH_OFFSET_ACCOUNT": "",  # balanced files: each file debits the agency's account for its credits
    "HMS_ACH_OFFSET_ROUTING": "",  # that account's bank (default: the ODFI)
    "HMS_ACH_OFFSET_ACCOUNT_TYPE": "checking",
    "HMS_ACH_OUTBOUND_DIR": "",  # default: instance/ach/outbound (the stand-in for the bank's SFTP drop)
    "HMS_ACH_INBOUND_DIR": "",  # default: instance/ach/inbound (returns and notifications of change)
    "HMS_ACH_CUTOFFS": ["10:30", "14:45", "16:45"],  # HH:MM in HMS_ACH_BANK_TZ: a file is made at each
    "HMS_ACH_BANK_TZ": "America/New_York",
    "HMS_ACH_FILE_EVERY_S": 0.0,  # development: a file every N seconds instead of at the cut-offs
    "HMS_ACH_RETRY_BASE_S": 1.0,
    "HMS_ACH_RETRY_MAX_S": 60.0,
    "HMS_ACH_BREAKER_FAIL_MAX": 5,
    "HMS_ACH_BREAKER_RESET_S": 10.0,
    "HMS_ACH_SEND_LEASE_S": 30.0,
    "HMS_ACH_POLL_S": 0.5,
    "HMS_CLAIMS_PER_MINUTE": 10,
    "HMS_SWEEP_ACCOUNTS_EVERY_S": 3600.0,  # a gateway process sweeps unused bank details this often (0: never)
    "HMS_HTTP_CONNECTION_LIMIT": 1000,  # `hms up`: open connections waitress keeps (idle ones cost no thread)
    "HMS_HTTP_CHANNEL_TIMEOUT_S": 30.0,  # `hms up`: an idle connection is closed after this long
    "HMS_TRUSTED_PROXIES": 0,  # reverse proxies in front whose X-Forwarded-For/-Proto/-Host are believed
    "HMS_METRICS_PORT": 0,  # `hms worker`: serve /metrics on this port (0: not at all)
    "HMS_METRICS_HOST": "127.0.0.1",
    "MAX_CONTENT_LENGTH": 64 * 1024,
}


class ConfigError(ValueError):
    """A configuration value that cannot be used, naming the variable."""


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if isinstance(default, (int, float)):
        try:
            number = type(default)(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if number < 0:
            raise ConfigError(f"{key}: must not be negative, got {value!r}")
        return number
    if isinstance(default, list):
        items = value if isinstance(value, (list, tuple)) else [s.strip() for s in str(value).split(",") if s.strip()]
        if default and isinstance(default[0], float):
            try:
                return [float(i) for i in items]
            except ValueError:
                raise ConfigError(f"{key}: expected comma-separated seconds, got {value!r}") from None
        return list(items)
    return value


def load(overrides: Mapping[str, Any] | None, instance_path: str) -> dict[str, Any]:
    """The effective settings, with every HMS_* value checked and typed."""
    raw: dict[str, Any] = dict(DEFAULTS)
    for key, value in os.environ.items():
        if key.startswith("HMS_"):
            raw[key] = value
    raw.update(overrides or {})
    settings = {k: _coerce(k, v, DEFAULTS[k]) if k in DEFAULTS else v for k, v in raw.items()}
    unknown = [s for s in settings["HMS_SERVICES"] if s not in ALL_SERVICES]
    if unknown:
        raise ConfigError(f"HMS_SERVICES: unknown service {unknown[0]!r}; choose from {', '.join(ALL_SERVICES)}")
    if not 1 <= settings["HMS_NATS_REPLICAS"] <= 5:
        raise ConfigError(f"HMS_NATS_REPLICAS: JetStream keeps 1 to 5 replicas, got {settings['HMS_NATS_REPLICAS']}")
    rate = settings["HMS_ACH_SANDBOX_FAIL_RATE"]
    if not 0 <= rate <= 1:
        raise ConfigError(f"HMS_ACH_SANDBOX_FAIL_RATE: must be between 0 and 1, got {rate}")
    settings["HMS_JWT_ROLE_MAP"] = _role_map(settings["HMS_JWT_ROLE_MAP"])
    jwks_url = settings["HMS_JWT_JWKS_URL"]
    if jwks_url == "discover":
        _check_url("HMS_JWT_ISSUER", settings["HMS_JWT_ISSUER"], "an issuer URL to discover its keys from")
    elif jwks_url:
        _check_url("HMS_JWT_JWKS_URL", jwks_url, "a JWKS URL, or 'discover'")
    _check_oidc(settings)
    _check_nacha(settings)
    instance = Path(settings.get("HMS_INSTANCE_PATH") or instance_path).resolve()
    settings["HMS_INSTANCE_PATH"] = str(instance)
    # The development identity provider publishes its keys here; the gateway trusts this file
    # unless HMS_JWT_JWKS_FILE names another one.
    settings["HMS_DEV_JWKS_FILE"] = str(instance / "jwks.json")
    settings["HMS_JWT_JWKS_FILE"] = settings["HMS_JWT_JWKS_FILE"] or settings["HMS_DEV_JWKS_FILE"]
    for key, name in (
        ("HMS_JWT_PRIVATE_KEY_FILE", "jwt-private.pem"),
        ("HMS_ACH_SANDBOX_STATEMENT", "sandbox-bank.jsonl"),
        ("HMS_ACH_OUTBOUND_DIR", "ach/outbound"),
        ("HMS_ACH_INBOUND_DIR", "ach/inbound"),
    ):
        settings[key] = settings[key] or str(instance / name)
    return settings


def _role_map(entries: list[str]) -> dict[str, str]:
    """HMS_JWT_ROLE_MAP: provider-role=hms-role pairs (already split at the commas by _coerce)."""
    mapping = {}
    for entry in entries:
        provider, _, ours = str(entry).partition("=")
        if not provider.strip() or ours.strip() not in ROLES:
            raise ConfigError(
                f"HMS_JWT_ROLE_MAP: {entry!r}: expected provider-role=hms-role, hms-role one of {', '.join(ROLES)}"
            )
        mapping[provider.strip()] = ours.strip()
    return mapping


def _check_oidc(s: dict[str, Any]) -> None:
    """Browser sign-in settings that work together, or none."""
    for key in ("HMS_OIDC_SCOPES", "HMS_OIDC_ACR_VALUES"):  # space- or comma-separated, as OIDC writes them
        s[key] = " ".join(s[key]).split()
    if s["HMS_OIDC_DEFAULT_ROLE"] not in ("", *ROLES):
        role = s["HMS_OIDC_DEFAULT_ROLE"]
        raise ConfigError(f"HMS_OIDC_DEFAULT_ROLE: expected one of {', '.join(ROLES)}, got {role!r}")
    if not s["HMS_OIDC_ISSUER"]:
        return
    _check_url("HMS_OIDC_ISSUER", s["HMS_OIDC_ISSUER"], "the OpenID Provider's issuer URL")
    if not s["HMS_OIDC_CLIENT_ID"]:
        raise ConfigError("HMS_OIDC_CLIENT_ID: required with HMS_OIDC_ISSUER")
    if bool(s["HMS_OIDC_CLIENT_SECRET"]) == bool(s["HMS_OIDC_CLIENT_KEY_FILE"]):
        raise ConfigError("HMS_OIDC_CLIENT_SECRET or HMS_OIDC_CLIENT_KEY_FILE: set exactly one (how hms authenticates)")
    key = s["HMS_OIDC_CLIENT_KEY_FILE"]
    if key and not Path(key).is_file():
        raise ConfigError(f"HMS_OIDC_CLIENT_KEY_FILE: no such file {key!r}")
    if "openid" not in s["HMS_OIDC_SCOPES"]:
        raise ConfigError(f"HMS_OIDC_SCOPES: must include openid, got {' '.join(s['HMS_OIDC_SCOPES'])!r}")


def _check_nacha(s: dict[str, Any]) -> None:
    """The nacha provider's settings: what a bank would refuse is refused at start."""
    provider = s["HMS_ACH_PROVIDER"]
    if provider not in ("sandbox", "nacha"):
        raise ConfigError(f"HMS_ACH_PROVIDER: expected sandbox or nacha, got {provider!r}")
    cutoffs = []
    for text in s["HMS_ACH_CUTOFFS"]:
        hours, _, minutes = str(text).partition(":")
        if not (hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60 and len(minutes) == 2):
            raise ConfigError(f"HMS_ACH_CUTOFFS: expected HH:MM times, comma-separated, got {text!r}")
        cutoffs.append((int(hours), int(minutes)))
    s["HMS_ACH_CUTOFFS"] = sorted(cutoffs)
    try:
        ZoneInfo(s["HMS_ACH_BANK_TZ"])
    except (ValueError, ZoneInfoNotFoundError):
        raise ConfigError(f"HMS_ACH_BANK_TZ: not a time zone: {s['HMS_ACH_BANK_TZ']!r}") from None
    if provider != "nacha":
        return
    origin = s["HMS_ACH_IMMEDIATE_ORIGIN"]
    if origin and (len(origin) > 10 or not origin.strip().isalnum()):
        raise ConfigError(f"HMS_ACH_IMMEDIATE_ORIGIN: up to 10 letters or digits (from the bank), got {origin!r}")
    offset = s["HMS_ACH_OFFSET_ACCOUNT"]
    if offset and (problem := account_number_problem(offset)):
        raise ConfigError(f"HMS_ACH_OFFSET_ACCOUNT: an account number {problem}, got {offset!r}")
    if s["HMS_ACH_OFFSET_ACCOUNT_TYPE"] not in ("checking", "savings"):
        raise ConfigError(f"HMS_ACH_OFFSET_ACCOUNT_TYPE: checking or savings, got {s['HMS_ACH_OFFSET_ACCOUNT_TYPE']!r}")
    for key in ("HMS_ACH_ODFI_ROUTING", "HMS_ACH_IMMEDIATE_DESTINATION", "HMS_ACH_OFFSET_ROUTING"):
        optional = key != "HMS_ACH_ODFI_ROUTING"  # the others default to the ODFI
        problem = None if optional and not s[key] else routing_number_problem(s[key])
        if problem:
            raise ConfigError(f"{key}: a routing number {problem}, got {s[key]!r}")
    if not 1 <= len(s["HMS_ACH_COMPANY_ID"]) <= 10:
        raise ConfigError(f"HMS_ACH_COMPANY_ID: 1 to 10 characters (from the bank), got {s['HMS_ACH_COMPANY_ID']!r}")
    for key, most in (("HMS_ACH_COMPANY_NAME", 16), ("HMS_ACH_ENTRY_DESCRIPTION", 10)):
        if not 1 <= len(s[key]) <= most:
            raise ConfigError(f"{key}: 1 to {most} characters, got {s[key]!r}")
    if not s["HMS_ACH_CUTOFFS"] and not s["HMS_ACH_FILE_EVERY_S"]:
        raise ConfigError("HMS_ACH_CUTOFFS: at least one cut-off time (or HMS_ACH_FILE_EVERY_S)")


def _check_url(key: str, url: str, what: str) -> None:
    """https, or http only to this machine (a development provider); never plain http across a network."""
    parsed = urlsplit(url)
    loopback = parsed.hostname in ("127.0.0.1", "::1", "localhost")
    if parsed.scheme != "https" and not (parsed.scheme == "http" and loopback):
        raise ConfigError(f"{key}: expected {what} over https (http only on a loopback address), got {url!r}")

"""HMS: the payout mesh of a benefits agency."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

__all__ = ["create_app"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: configuration, bus, the hosted services and the gateway; start workers if HMS_START.

    Nothing runs in the background unless HMS_START is true (see `hms.wsgi`) or `hms up`/`hms worker` start it.
    """
    from hms import ach, auth, cli, gateway, logs, metrics, notifier, svc
    from hms.auth import keys as _  # noqa: F401  (auth.keys, the identity provider)
    from hms.config import load
    from hms.gateway.reconcile import sweep_round
    from hms.runtime.host import Mesh, install
    from hms.runtime.worker import BackgroundWorker

    app = Flask("hms")
    settings = load(config, app.instance_path)
    app.config.update(settings)
    app.instance_path = settings["HMS_INSTANCE_PATH"]
    logs.configure(str(settings.get("HMS_LOG_LEVEL", "INFO")))
    mesh = Mesh(app.config)
    install(app, mesh)
    if mesh.guard is not None:
        # Every process mints its services' tokens with the mesh's signing key (HMS_JWT_PRIVATE_KEY_FILE).
        idp = auth.keys.IdentityProvider(
            settings["HMS_JWT_PRIVATE_KEY_FILE"],
            settings["HMS_DEV_JWKS_FILE"],
            settings["HMS_JWT_ISSUER"],
            settings["HMS_JWT_AUDIENCE"],
        )
        policy, ttl = mesh.guard.policy, settings["HMS_SERVICE_TOKEN_TTL_S"]
        mesh.guard.issue = lambda service: idp.issue_service_token(service, policy.services[service], ttl)
    if mesh.hosts("auth"):
        auth.init_app(app)
    for service in (svc.service, ach.service, metrics.service, notifier.service):
        if mesh.hosts(service.name):
            app.extensions[f"hms.{service.name}"] = mesh.host(service)
    if mesh.hosts("gateway"):
        gateway.init_app(app)
        every, timeout = settings["HMS_SWEEP_ACCOUNTS_EVERY_S"], settings["HMS_REQUEST_TIMEOUT_S"]
        if every:  # what `hms audit sweep-accounts` does, without a cron job; the first round a minute after start

            def sweep(_stop: object) -> int:
                return sweep_round(mesh.client, timeout)

            sweeper = BackgroundWorker("gateway.sweep", sweep, every, delay=min(60.0, every))
            mesh.on_start(sweeper.start, sweeper.stop)
    cli.init_app(app)
    if settings["HMS_START"]:
        mesh.start()
    elif settings["HMS_BUS_URL"].startswith("memory://"):
        mesh.open()  # in-process requests (the CLI's, a test's) need the responders of this process
    return app

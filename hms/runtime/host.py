"""The mesh of one process: its bus, and the services it hosts brought to life from their declarations."""

from __future__ import annotations

import fcntl
import logging
import os
import types
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import MetaData
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError

from hms.bus import BUS_EXTENSION, Bus, BusError, Event, ReplyError, Subscription, connect, iso
from hms.bus.guard import Guard, GuardedBus, Policy, Signed
from hms.bus.registry import Registration, ServiceInfo
from hms.bus.telemetry import InstrumentedBus, Telemetry, breaker_gauge, outbox_gauge
from hms.bus.tokens import KeySet
from hms.config import ConfigError
from hms.contracts import Contracts

from .deadletters import NotReplayable
from .service import Service
from .store import ServiceStore
from .unit import Unit
from .worker import BackgroundWorker

log = logging.getLogger("hms.mesh")
EXTENSION = "hms"
OPS = ("deadletters.list", "deadletters.replay")  # what every service with consumers answers for operators


class Mesh:
    """Owns what the services of this process share; kept in `app.extensions["hms"]`."""

    def __init__(self, config: dict[str, Any], bus: Bus | None = None) -> None:
        self.config = config
        self.instance_path = Path(config["HMS_INSTANCE_PATH"])
        try:
            engine = bus or connect(
                config["HMS_BUS_URL"],
                Contracts(),
                stream=config["HMS_NATS_STREAM"],
                event_subjects=config["HMS_NATS_EVENT_SUBJECTS"],
                ack_wait=config["HMS_NATS_ACK_WAIT_S"],
                replicas=config["HMS_NATS_REPLICAS"],
                name=f"hms:{','.join(config['HMS_SERVICES'])}",
                connect_timeout=config["HMS_NATS_CONNECT_TIMEOUT_S"],
            )
        except BusError as exc:
            raise ConfigError(str(exc)) from None
        self.telemetry = Telemetry()
        engine = InstrumentedBus(engine, self.telemetry)
        self.guard: Guard | None = None
        if config["HMS_SYS_AUTH"]:
            # Tokens are issued by the identity provider that create_app hands in (issue_service_token).
            self.guard = Guard(
                Policy.load(), KeySet(config["HMS_DEV_JWKS_FILE"]), None, issuer=config["HMS_JWT_ISSUER"]
            )
            engine = GuardedBus(engine, self.guard)  # outermost: what a service does is checked first
        self.bus: Bus = engine
        self.stores: dict[str, ServiceStore] = {}
        self.instances: dict[str, Any] = {}
        self.workers: dict[str, BackgroundWorker] = {}
        self.registrations: dict[str, Registration] = {}
        self._infos: list[ServiceInfo] = []
        self._responders: list[tuple[str, Callable[[Event], Any], str]] = []
        self._open: list[Subscription] = []
        self._starters: list[Callable[[], None]] = []
        self._stoppers: list[Callable[[], None]] = []
        self.started = False
        self._lock: IO[str] | None = None  # the instance folder, held while memory:// runs here
        # What the gateway gets: the bus, its requests signed as the gateway; nothing of the runtime.
        self.client: Bus = Signed(self.bus, lambda: self.credentials("gateway"))
        self.telemetry.add_collector(lambda: outbox_gauge({n: st.outbox_backlog for n, st in self.stores.items()}))
        # Breakers from the services declared, not those registered: /metrics may be asked before the mesh opens.
        self.telemetry.add_collector(
            lambda: breaker_gauge(
                {(info.name, breaker): state for info in self._infos for breaker, state in info.breakers().items()}
            )
        )

    def hosts(self, service: str) -> bool:
        """Whether this process runs `service` (HMS_SERVICES)."""
        return service in self.config["HMS_SERVICES"]

    def database_url(self, service: str) -> str:
        """The service's URL: its own override, the shared URL, or a SQLite file under the instance path."""
        own = self.config.get(f"HMS_{service.upper()}_DATABASE_URL")
        if own:
            return str(own)
        shared = self.config.get("HMS_DATABASE_URL")
        if shared and not str(shared).startswith("sqlite"):
            return str(shared)
        return f"sqlite:///{self.instance_path / (service + '.db')}"

    def database_setting(self, service: str) -> str:
        """The variable that names the service's database, for error messages."""
        own = f"HMS_{service.upper()}_DATABASE_URL"
        if self.config.get(own):
            return own
        shared = str(self.config.get("HMS_DATABASE_URL") or "")
        return "HMS_DATABASE_URL" if shared and not shared.startswith("sqlite") else "HMS_INSTANCE_PATH"

    def store(self, service: str, metadata: MetaData) -> ServiceStore:
        """Create the store of a hosted service."""
        cfg = self.config
        try:
            store = ServiceStore(
                service,
                metadata,
                self.database_url(service),
                self.bus,
                poll_interval=cfg["HMS_OUTBOX_POLL_S"],
                max_deliver=cfg["HMS_BUS_MAX_DELIVER"],
                backoff=cfg["HMS_BUS_BACKOFF_S"],
                credentials=lambda: self.credentials(service),
                wake=lambda worker: self.workers[f"{service}.{worker}"].wake,
            )
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"{self.database_setting(service)}: the driver {exc.name!r} is not installed"
                " (PostgreSQL: pip install 'hms[postgres]')"
            ) from None
        except (ArgumentError, ValueError, OSError) as exc:
            raise ConfigError(f"{self.database_setting(service)}: {first_line(exc)}") from None
        retention = timedelta(days=cfg["HMS_INBOX_RETENTION_DAYS"])
        store.housekeeping(lambda: log.info("%s: pruned %d inbox rows", service, store.prune_inbox(retention)))
        self.stores[service] = store
        return store

    def host(self, service: Service) -> Any:
        """Bring a declared service to life in this process: its store, its instance, and everything it
        declared (request handlers, consumers, workers, chores, discovery); returns the instance."""
        store = self.store(service.name, service.metadata)
        impl = service.implementation(self.config, store.session)

        def bound(method: Callable[..., Any]) -> Callable[..., Any]:
            return types.MethodType(method, impl)

        for subject, method in service.requests.items():
            self.serve(subject, _in_unit(store, bound(method)), service.name)
        for c in service.consumers:
            store.consume(c.subject, bound(c.handler), name=c.name)
        for w in service.workers:
            worker = BackgroundWorker(f"{service.name}.{w.name}", bound(w.step), float(self.config[w.poll]))
            self.workers[worker.name] = worker
            self.on_start(worker.start, worker.stop)
        for chore in service.chores:
            store.housekeeping(bound(chore))
        if service.consumers:
            self._serve_dead_letters(service.name, store)
        health = bound(service.health) if service.health else dict
        self.register(
            ServiceInfo(
                name=service.name,
                version=service.version,
                description=service.description,
                publishes=list(service.publishes),
                health=lambda: {
                    "status": "ok",
                    "outbox": store.outbox_backlog(),
                    "unverifiable": self.telemetry.unverifiable_total(),  # messages it could not verify
                    **health(),
                },
                breakers=bound(service.breakers) if service.breakers else dict,
            )
        )
        self.instances[service.name] = impl
        return impl

    def _serve_dead_letters(self, name: str, store: ServiceStore) -> None:
        """`<service>.deadletters.list` and `.replay`: operators reach a service's dead letters over the bus."""

        def listing(event: Event) -> dict[str, Any]:
            return {"items": [_dead_letter_view(d) for d in store.list_dead_letters()]}

        def replay(event: Event) -> dict[str, Any]:
            try:
                store.replay(event.data["id"])
            except NotReplayable as exc:
                raise ReplyError(404, "Not found", str(exc), "id") from None
            except Exception as exc:  # the handler's own error is what the operator needs
                raise ReplyError(409, "Replay failed", f"{type(exc).__name__}: {exc}") from None
            return {"id": event.data["id"], "replayed": True}

        self.serve(f"{name}.deadletters.list", listing, name)
        self.serve(f"{name}.deadletters.replay", replay, name)

    def credentials(self, service: str) -> dict[str, str]:
        """The headers that identify `service` as the sender of a message (empty without HMS-SYS-AUTH)."""
        return self.guard.headers(service) if self.guard else {}

    def register(self, info: ServiceInfo) -> None:
        """Declare a service instance; it answers discovery ($SRV.*) once the mesh is open."""
        self._infos.append(info)

    def serve(self, subject: str, handler: Callable[[Event], Any], service: str) -> None:
        """Declare a request/reply responder of `service` (one member of the service's queue group answers)."""
        self._responders.append((subject, handler, service))

    def open(self) -> None:
        """Answer requests and discovery; no events are consumed and nothing runs in the background yet."""
        if self._open or self.registrations:
            return
        for info in self._infos:
            # What a service consumes and serves is known from its declarations; only publishes is stated.
            store = self.stores.get(info.name)
            info.subscribes = store.subscribed if store else []
            info.serves = [subject for subject, _, service in self._responders if service == info.name]
            self.registrations[info.name] = Registration(self.bus, info)
        for subject, handler, service in self._responders:
            self._open.append(self.bus.subscribe(subject, self._counted(handler, service), queue=service))

    def _counted(self, handler: Callable[[Event], Any], service: str) -> Callable[[Event], Any]:
        def counted(event: Event) -> Any:
            reg = self.registrations.get(service)
            if reg is not None:
                reg.count(event.subject)
            return handler(event)

        return counted

    def on_start(self, start: Callable[[], None], stop: Callable[[], None] | None = None) -> None:
        """Run `start` when the mesh starts its workers, and `stop` when it closes."""
        self._starters.append(start)
        if stop is not None:
            self._stoppers.append(stop)

    def upgrade(self) -> None:
        """Run every hosted service's migrations; a database that cannot be reached names its variable."""
        for name, store in self.stores.items():
            try:
                store.upgrade()
            except (OperationalError, InterfaceError) as exc:
                raise self._unusable(name, exc) from None

    def _unusable(self, service: str, exc: DBAPIError) -> ConfigError:
        where = self.stores[service].engine.url.render_as_string(hide_password=True)
        return ConfigError(f"{self.database_setting(service)}: cannot use {where}: {first_line(exc.orig)}")

    def start(self) -> None:
        """Start the background work: outbox relays and the services' workers."""
        if self.started:
            return
        for name, store in self.stores.items():
            try:
                current = store.is_current()
            except (OperationalError, InterfaceError) as exc:
                raise self._unusable(name, exc) from None
            if not current:
                setting = self.database_setting(name)
                raise ConfigError(f"{setting}: the {name} database is not migrated: run `hms db upgrade`")
        if self.config["HMS_BUS_URL"].startswith("memory://"):
            self._lock = hold_instance(self.instance_path)
        self.started = True
        self.open()
        for store in self.stores.values():
            store.start()
        for start in self._starters:
            start()
        log.info("mesh started: %s", ", ".join(sorted(self.registrations)))

    def close(self) -> None:
        """Stop workers, the bus and the databases, in that order."""
        for stop in reversed(self._stoppers):
            stop()
        for store in self.stores.values():
            store.stop()
        for sub in self._open:
            sub.unsubscribe()
        for reg in self.registrations.values():
            reg.close()
        self._open, self.registrations = [], {}
        self.bus.close()
        for store in self.stores.values():
            store.engine.dispose()
        if self._lock is not None:
            self._lock.close()  # releases the instance folder
            self._lock = None
        if self.started:
            log.info("mesh closed")
        self.started = False


def hold_instance(instance: Path) -> IO[str]:
    """Lock the instance folder for this process: the in-process bus reaches no other process."""
    instance.mkdir(parents=True, exist_ok=True)
    f = open(instance / "hms.lock", "a+")  # noqa: SIM115 (held open until the mesh closes)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise ConfigError(
            f"HMS_BUS_URL: memory:// runs the whole mesh in one process, and process {holder} already runs it"
            f" on {instance}: run one gunicorn worker (-w 1) or one `hms up`, or share a bus (nats://…)"
        ) from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def first_line(exc: BaseException | None) -> str:
    """An error's own words, without a driver's extra lines ('FATAL:' prefixes and hints dropped)."""
    text = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else type(exc).__name__
    return text.rsplit("FATAL:", 1)[-1].strip()


def mesh_of(app: Any) -> Mesh:
    """The mesh of a Flask app."""
    return app.extensions[EXTENSION]  # type: ignore[no-any-return]


def install(app: Any, mesh: Mesh) -> None:
    """Keep the mesh in the app, and the gateway's signed bus where the gateway finds it (hms.bus.bus_of)."""
    app.extensions[EXTENSION] = mesh
    app.extensions[BUS_EXTENSION] = mesh.client


def _in_unit(store: ServiceStore, handler: Callable[[Unit, Event], Any]) -> Callable[[Event], Any]:
    """A request handler `handler(uow, event)` as the bus calls it: in a unit of work of its own."""

    def answer(event: Event) -> Any:
        with store.session() as uow:
            return handler(uow, event)

    return answer


def _dead_letter_view(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": d["id"],
        "eventId": d["event_id"],
        "consumer": d["consumer"],
        "subject": d["subject"],
        "error": d["error"],
        "attempts": d["attempts"],
        "failedAt": iso(d["failed_at"]),
    }

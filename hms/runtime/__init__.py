"""The runtime that hosts services on the bus: each service's database and units of work, its outbox and
relay, inbox, dead letters, relay leadership, migrations, workers, and the mesh of one process (host.py).

A service declares its face with `Service` (service.py); `Mesh.host` brings it to life. The gateway never
imports this package: it gets a bus (`hms.bus.bus_of`).
"""

from .database import UtcDateTime, table_of, utcnow
from .host import Mesh, mesh_of
from .service import Consumer, Service, Worker
from .store import ServiceStore, messaging_tables
from .unit import Unit

__all__ = [
    "Consumer",
    "Mesh",
    "Service",
    "Worker",
    "ServiceStore",
    "Unit",
    "UtcDateTime",
    "mesh_of",
    "messaging_tables",
    "table_of",
    "utcnow",
]

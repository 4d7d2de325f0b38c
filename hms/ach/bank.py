"""Bank providers. The sandbox bank writes every transfer it accepts to a statement file."""

from __future__ import annotations

import fcntl
import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Protocol


class BankUnavailable(Exception):
    """The bank could not take the transfer now; try again later with the same key."""


class BankDeclined(Exception):
    """The bank refused the transfer for good (for example, a closed account)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Transfer:
    """What we ask the bank to pay."""

    idempotency_key: str
    claim_id: str
    amount: Decimal
    routing_number: str
    account_number: str
    originator: str = ""  # whose transfer it is: one statement may hold several deployments' transfers


class BankProvider(Protocol):
    """A bank: pays a transfer, and says whether it already holds one for a key."""

    def transfer(self, t: Transfer) -> str: ...

    def lookup(self, idempotency_key: str) -> str | None: ...

    def transfers_by_claim(self, originator: str) -> dict[str, int]: ...


class SandboxBank:
    """A bank for demos and fault tests; like a real bank it does not de-duplicate."""

    CLOSED_PREFIX = "9999"  # accounts starting with this are closed: a permanent decline

    def __init__(self, statement: Path, *, latency_ms: int = 0, fail_rate: float = 0.0, outage_file: str = "") -> None:
        self.statement, self.latency_ms, self.fail_rate = Path(statement), latency_ms, fail_rate
        self.outage_file = Path(outage_file) if outage_file else None
        self.statement.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._random = random.Random()

    def transfer(self, t: Transfer) -> str:
        """Accept the transfer and append it to the statement, or raise."""
        if self.outage_file is not None and self.outage_file.exists():
            raise BankUnavailable("sandbox bank is down (outage file present)")
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        if self.fail_rate and self._random.random() < self.fail_rate:
            raise BankUnavailable("sandbox bank refused the transfer (fail rate)")
        if t.account_number.startswith(self.CLOSED_PREFIX):
            raise BankDeclined("ACCOUNT_CLOSED")
        reference = f"SBX-{t.idempotency_key[-12:]}-{time.time_ns() % 10**9:09d}"
        line = (
            json.dumps(
                {
                    "originator": t.originator,
                    "idempotencyKey": t.idempotency_key,
                    "claimId": t.claim_id,
                    "amount": str(t.amount),
                    "account": "****" + t.account_number[-4:],
                    "routing": t.routing_number,
                    "reference": reference,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            )
            + "\n"
        )
        with self._lock, open(self.statement, "a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # several processes may share one statement
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return reference

    def lookup(self, idempotency_key: str) -> str | None:
        """The reference of an accepted transfer with this key, if any."""
        if self.outage_file is not None and self.outage_file.exists():
            raise BankUnavailable("sandbox bank is down (outage file present)")
        for entry in read_statement(self.statement):
            if entry.get("idempotencyKey") == idempotency_key:
                return str(entry["reference"])
        return None

    def transfers_by_claim(self, originator: str) -> dict[str, int]:
        """How many of the originator's transfers the statement holds for each claim (more than one is a
        double payment). Lines written before statements named their originator count for everyone."""
        entries = read_statement(self.statement)
        return dict(Counter(e["claimId"] for e in entries if e.get("originator", originator) == originator))


def read_statement(path: Path) -> list[dict[str, str]]:
    """Every transfer on a sandbox statement (a torn last line is skipped)."""
    if not Path(path).exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out

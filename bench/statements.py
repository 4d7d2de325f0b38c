"""What one claim costs the databases: transactions and SQL statements per claim, by service and statement.

    python -m bench.statements [--claims 100]

An in-process mesh (SQLite, the in-process bus) takes claims one at a time, each until its transfer is on the sandbox
bank's statement; SQLAlchemy's own events count every transaction begun and every statement sent, per database.
Idle polls are kept out of the count: the relays and the payment worker poll once a minute here, and are woken by
the commits that give them work, as in every deployment.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from bench.cases import LOAD, running_mesh
from tests.conftest import DIEGO, eventually


def count(claims: int) -> tuple[Counter[str], Counter[str]]:
    app, mesh = running_mesh({**LOAD, "HMS_OUTBOX_POLL_S": 60, "HMS_ACH_POLL_S": 60})
    statement = Path(app.config["HMS_ACH_SANDBOX_STATEMENT"])
    idp, client = app.extensions["hms.auth"], app.test_client()
    transactions: Counter[str] = Counter()
    statements: Counter[str] = Counter()
    counting = [False]

    def database(conn: Any) -> str:
        return Path(str(conn.engine.url.database)).stem

    def on_begin(conn: Any) -> None:
        if counting[0]:
            transactions[database(conn)] += 1

    def on_statement(conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if counting[0]:
            statements[f"{database(conn)}: {' '.join(sql.split())[:70]}"] += 1

    event.listen(Engine, "begin", on_begin)
    event.listen(Engine, "before_cursor_execute", on_statement)

    def paid() -> int:
        return len(statement.read_text().splitlines()) if statement.exists() else 0

    try:
        for i in range(claims + 1):  # the first warms up (imports, connections) and is not counted
            counting[0] = i > 0
            token = idp.issue(f"count-{i}", "citizen")
            if client.post("/claims", json=DIEGO, headers={"Authorization": f"Bearer {token}"}).status_code != 201:
                raise RuntimeError("claim refused")
            eventually(lambda i=i: paid() > i, 30, interval=0.001)
            time.sleep(0.05)  # what follows the transfer: payment.sent to svc, metrics and the notifier
    finally:
        counting[0] = False
        event.remove(Engine, "begin", on_begin)
        event.remove(Engine, "before_cursor_execute", on_statement)
        mesh.close()
    return transactions, statements


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=100)
    args = parser.parse_args(argv)
    transactions, statements = count(args.claims)
    n = args.claims
    print(f"per claim, over {n} claims filed one at a time:")
    print(f"  transactions: {sum(transactions.values()) / n:.2f}")
    for db, k in sorted(transactions.items()):
        print(f"    {db}: {k / n:.2f}")
    print(f"  statements: {sum(statements.values()) / n:.2f}")
    for sql, k in sorted(statements.items()):
        print(f"    {k / n:5.2f}  {sql}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

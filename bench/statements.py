"""What one claim costs the databases: transactions and SQL statements per claim, by service and statement.

    python -m bench.statements [--claims 100]

An in-process mesh (SQLite, the in-process bus) takes claims one at a time, each until its transfer is on the sandbox
bank's statement; SQLAlchemy's own events count every transaction begun and every statement sent, per database.
Idle polls are kept out of the count: the relays and the payment worker poll once a minute here, and are woken by
the commits that give them work, as in every deployment.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from bench.cases import one_at_a_time, running_mesh

Transaction = tuple[str, list[tuple[str, Any, bool]]]  # a database, and its statements with their parameters


def count(claims: int) -> list[Transaction]:
    """Every transaction of `claims` claims, with its statements, as it ran (`tally` counts them)."""
    counting = [False]
    recorded: list[Transaction] = []
    open_: dict[Any, list[tuple[str, Any, bool]]] = {}

    def database(conn: Any) -> str:
        return Path(str(conn.engine.url.database)).stem

    def on_begin(conn: Any) -> None:
        if counting[0]:
            open_[conn] = []
            recorded.append((database(conn), open_[conn]))

    def on_statement(conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, many: bool) -> None:
        if counting[0] and conn in open_:
            # insertmanyvalues with RETURNING reports each row's execute as "many" with that one row's tuple
            open_[conn].append((sql, params, many and isinstance(params, list)))

    def on_end(conn: Any) -> None:
        open_.pop(conn, None)

    listeners = [("begin", on_begin), ("before_cursor_execute", on_statement), ("commit", on_end), ("rollback", on_end)]
    for name, fn in listeners:
        event.listen(Engine, name, fn)
    try:  # the first claim warms up (imports, connections) and is not counted
        one_at_a_time(claims, warm=1, counting=lambda on: counting.__setitem__(0, on), pause=0.05)
    finally:
        for name, fn in listeners:
            event.remove(Engine, name, fn)
    return recorded


def tally(recorded: list[Transaction]) -> tuple[Counter[str], Counter[str]]:
    """Transactions by database, and statements by database and their first 70 characters."""
    transactions = Counter(db for db, _ in recorded)
    statements = Counter(f"{db}: {' '.join(sql.split())[:70]}" for db, work in recorded for sql, _, _ in work)
    return transactions, statements


def replay(recorded: list[Transaction], *, through_sqlalchemy: bool) -> float:
    """CPU seconds to run the recorded transactions again, nothing else, on a fresh mesh's migrated databases:
    straight through the sqlite3 driver, or through SQLAlchemy's thinnest path (`exec_driver_sql`)."""
    _app, mesh = running_mesh({}, start=False)  # its databases are WAL already: the migration made them
    with contextlib.ExitStack() as stack:
        stack.callback(mesh.close)
        if through_sqlalchemy:
            engines = {name: store.engine for name, store in mesh.stores.items()}
            started = time.process_time()
            for db, work in recorded:
                with engines[db].begin() as c:
                    for sql, params, many in work:
                        c.exec_driver_sql(sql, params if many else tuple(params))
            return time.process_time() - started
        raw: dict[str, sqlite3.Connection] = {}
        for name, store in mesh.stores.items():
            raw[name] = sqlite3.connect(str(store.engine.url.database), isolation_level=None)
            stack.callback(raw[name].close)
            raw[name].execute("PRAGMA synchronous=NORMAL")  # as the mesh's own connections
        started = time.process_time()
        for db, work in recorded:
            raw[db].execute("BEGIN IMMEDIATE")
            for sql, params, many in work:
                (raw[db].executemany if many else raw[db].execute)(sql, params).fetchall()
            raw[db].execute("COMMIT")
        return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=100)
    args = parser.parse_args(argv)
    recorded = count(args.claims)
    transactions, statements = tally(recorded)
    n = args.claims
    driver = min(replay(recorded, through_sqlalchemy=False) for _ in range(3)) / n * 1000
    core = min(replay(recorded, through_sqlalchemy=True) for _ in range(3)) / n * 1000
    print(f"per claim, over {n} claims filed one at a time:")
    print(f"  transactions: {sum(transactions.values()) / n:.2f}")
    for db, k in sorted(transactions.items()):
        print(f"    {db}: {k / n:.2f}")
    print(f"  statements: {sum(statements.values()) / n:.2f}")
    for sql, k in sorted(statements.items()):
        print(f"    {k / n:5.2f}  {sql}")
    print("  CPU to run those statements again and nothing else (best of 3), per claim:")
    print(f"    through the sqlite3 driver: {driver:.2f} ms")
    print(f"    through SQLAlchemy (Connection.exec_driver_sql): {core:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The claim flow as a team would write it the conventional way: the peer hms is measured against.

Flask + SQLAlchemy + marshmallow + pyjwt behind waitress; a Celery worker pool on RabbitMQ (late acks, a task
given back when its worker dies); one SQLite file per part (claims, payments, metrics, notifier). A claim is
checked and decided in the request; the payment is a task: an idempotent payment row, the transfer through the
same sandbox bank hms uses (a statement line), then the claim marked paid, a payout record and a notification.

    python -m bench.peers.flask_celery web PORT                     the web process (waitress, 8 threads)
    celery -A bench.peers.flask_celery:celery worker -c 2   the worker pool

Environment: PEER_DIR (databases, statement, the token key `jwt-public.pem`), PEER_BROKER (AMQP URL).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import jwt
from celery import Celery
from flask import Flask, jsonify, request
from marshmallow import Schema, ValidationError, fields, validate
from sqlalchemy import DateTime, Engine, Numeric, String, create_engine, event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from hms.ach.bank import SandboxBank, Transfer
from hms.contracts.vocabulary import account_number_problem, routing_number_problem

DIR = Path(os.environ.get("PEER_DIR", "peer-instance"))
celery = Celery("peer", broker=os.environ.get("PEER_BROKER", "amqp://guest:guest@127.0.0.1:5672//"))
celery.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    task_default_queue=os.environ.get("PEER_QUEUE", "celery"),
)


class Base(DeclarativeBase):
    pass


class Claim(Base):
    __tablename__ = "claims"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    citizen: Mapped[str] = mapped_column(String(128), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    reasons: Mapped[str] = mapped_column(String(200), default="")
    submitted_at: Mapped[dt.datetime] = mapped_column(DateTime)


class Account(Base):
    __tablename__ = "accounts"
    claim_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    routing_number: Mapped[str] = mapped_column(String(9))
    account_number: Mapped[str] = mapped_column(String(17))


class Payment(Base):
    __tablename__ = "payments"
    claim_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    state: Mapped[str] = mapped_column(String(10))
    reference: Mapped[str | None] = mapped_column(String(80))


class Payout(Base):
    __tablename__ = "payouts"
    claim_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    submitted_at: Mapped[dt.datetime] = mapped_column(DateTime)
    paid_at: Mapped[dt.datetime] = mapped_column(DateTime)


class Notification(Base):
    __tablename__ = "notifications"
    claim_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    message: Mapped[str] = mapped_column(String(200))


_engines: dict[tuple[int, str], Engine] = {}


def db(name: str) -> Engine:
    """This process's engine for one part's SQLite file (made after a fork, never shared across one)."""
    key = (os.getpid(), name)
    if key not in _engines:
        engine = create_engine(f"sqlite:///{DIR / name}.db", connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _wal(conn: Any, _: Any) -> None:
            conn.isolation_level = None  # SQLAlchemy's pysqlite recipe: BEGIN is ours (below)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")

        @event.listens_for(engine, "begin")
        def _immediate(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # writers queue on the busy timeout instead of failing

        Base.metadata.create_all(engine)
        _engines[key] = engine
    return _engines[key]


class DirectDeposit(Schema):
    routingNumber = fields.String(required=True, validate=lambda v: routing_number_problem(v) is None)
    accountNumber = fields.String(required=True, validate=lambda v: account_number_problem(v) is None)
    accountType = fields.String(required=True, validate=validate.OneOf(["checking", "savings"]))


class Claimant(Schema):
    name = fields.String(required=True, validate=validate.Length(1, 200))
    ssnLast4 = fields.String(required=True, validate=validate.Regexp(r"[0-9]{4}\Z"))
    email = fields.Email(required=True)


class ClaimIn(Schema):
    claimant = fields.Nested(Claimant, required=True)
    employer = fields.String(required=True, validate=validate.Length(1, 200))
    separationReason = fields.String(required=True)
    weeksWorked = fields.Integer(required=True, strict=True, validate=validate.Range(0, 520))
    baseWages = fields.Float(required=True, validate=validate.Range(0, 10_000_000))
    directDeposit = fields.Nested(DirectDeposit, required=True)


def reasons(body: dict[str, Any], has_open_claim: bool) -> list[str]:
    """The same eligibility rules as hms's default rules file."""
    out = []
    if body["separationReason"] not in ("laid_off", "reduced_hours", "fired_other"):
        out.append("INELIGIBLE_SEPARATION")
    if body["weeksWorked"] < 20:
        out.append("INSUFFICIENT_WEEKS")
    if body["baseWages"] < 2500:
        out.append("INSUFFICIENT_WAGES")
    if has_open_claim:
        out.append("DUPLICATE_CLAIM")
    return out


def view(c: Claim) -> dict[str, Any]:
    return {"id": c.id, "status": c.status, "amount": float(c.amount) if c.amount else None, "reasons": c.reasons}


app = Flask(__name__)
PUBLIC_KEY = (DIR / "jwt-public.pem").read_bytes() if (DIR / "jwt-public.pem").exists() else b""


@app.post("/claims")
def submit() -> Any:
    try:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        who = jwt.decode(token, PUBLIC_KEY, algorithms=["RS256"], audience="hms")
    except jwt.PyJWTError as exc:
        return jsonify(error=str(exc)), 401
    if who.get("role") != "citizen":
        return jsonify(error="citizens only"), 403
    try:
        body = ClaimIn().load(request.get_json(force=True))
    except ValidationError as exc:
        return jsonify(errors=exc.messages), 422
    key = request.headers.get("Idempotency-Key")
    with Session(db("claims"), expire_on_commit=False) as s, s.begin():
        if key and (found := s.scalar(select(Claim).where(Claim.idempotency_key == f"{who['sub']}:{key}"))):
            return jsonify(view(found)), 201
        open_claim = s.scalar(
            select(Claim.id).where(Claim.citizen == who["sub"], Claim.status.in_(["approved", "paid"]))
        )
        why = reasons(body, open_claim is not None)
        claim = Claim(
            id=str(uuid.uuid4()),
            citizen=who["sub"],
            idempotency_key=f"{who['sub']}:{key}" if key else None,
            status="denied" if why else "approved",
            amount=None if why else Decimal(600),
            reasons=",".join(why),
            submitted_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
        )
        if not why:
            with Session(db("payments")) as p, p.begin():
                dd = body["directDeposit"]
                p.add(
                    Account(claim_id=claim.id, routing_number=dd["routingNumber"], account_number=dd["accountNumber"])
                )
        s.add(claim)
    if not why:
        pay.delay(claim.id)
    return jsonify(view(claim)), 201


BANK: SandboxBank | None = None


@celery.task(name="peer.pay")  # one name, whether this module runs as __main__ (web) or is imported
def pay(claim_id: str) -> None:
    """Pay one approved claim exactly once: the payment row guards the bank call, the bank is asked on a retry."""
    global BANK
    BANK = BANK or SandboxBank(DIR / "sandbox-bank.jsonl")
    key = f"peer-claim-{claim_id}"
    with Session(db("payments")) as p, p.begin():
        payment = p.get(Payment, claim_id)
        if payment is not None and payment.state == "sent":
            return  # a redelivered task: already paid
        if payment is None:
            p.add(Payment(claim_id=claim_id, state="sending"))
        account = p.get_one(Account, claim_id)
        details = (account.routing_number, account.account_number)
    with Session(db("claims")) as s:
        claim = s.get_one(Claim, claim_id)
        amount, submitted_at = claim.amount or Decimal(0), claim.submitted_at
    # A task redelivered after its worker died mid-send asks the bank first (the bank does not de-duplicate).
    reference = (payment is not None and BANK.lookup(key)) or BANK.transfer(
        Transfer(key, claim_id, amount, details[0], details[1], "peer")
    )
    with Session(db("payments")) as p, p.begin():
        paid = p.get_one(Payment, claim_id)
        paid.state, paid.reference = "sent", reference
    with Session(db("claims")) as s, s.begin():
        s.get_one(Claim, claim_id).status = "paid"
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    for part, row in (
        ("metrics", Payout(claim_id=claim_id, submitted_at=submitted_at, paid_at=now)),
        ("notifier", Notification(claim_id=claim_id, message=f"${amount} is on its way to your bank")),
    ):
        try:
            with Session(db(part)) as x, x.begin():
                x.add(row)
        except IntegrityError:
            pass  # recorded by an earlier delivery of this task


if __name__ == "__main__" and sys.argv[1:2] == ["web"]:
    from waitress import serve

    for part in ("claims", "payments", "metrics", "notifier"):
        db(part)
    serve(app, host="127.0.0.1", port=int(sys.argv[2]), threads=8, _quiet=True)

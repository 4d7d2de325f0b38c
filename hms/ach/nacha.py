"""The ACH rail: due payments leave in NACHA files (PPD credits) dropped for the bank at its cut-off times.

Each file is made in three steps, each safe to cut short by a crash:

1. **choose** (one transaction): at the first run past a cut-off, the pending payments recorded before it get
   trace numbers and go into a new `ach_files` row — its sequence, name, file id modifier, creation time and
   effective date all chosen now — in state `building`. A payment is in one file or none.
2. **write**: the file is rendered from those rows with achkit, written under a hidden name, flushed to disk and
   renamed into the outbound folder (atomic: the bank never sees half a file).
3. **record** (one transaction): the file is `sent`, its payments are sent, each with payment.sent.

A file left `building` by a crash is written again from its rows — the same bytes under the same name — and
recorded. If the crash came after the rename, the drop holds that same file again: the bank's duplicate-file
check (same origin, creation date and time, file id modifier) refuses the copy; no entry is ever in two files.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import holidays
from achkit import AchFile as NachaFile
from achkit import describe_change, describe_return, parse
from achkit.fields import AchError
from sqlalchemy import func, select

from hms.bus import ReplyError, iso
from hms.contracts.vocabulary import account_number_problem, bank_details_problem, routing_number_problem
from hms.runtime import Unit, utcnow

from .models import Account, AchFile, InboundFile, Notice, Payment, PaymentState, Setting

log = logging.getLogger("hms.ach")
MODIFIERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"  # a bank takes 36 files a day from one origin
TRACE_COUNTER = "nacha_trace"
REISSUABLE = ("R02", "R03", "R04")  # account closed, no account, invalid number: other details may work


class NachaRail:
    """Makes the NACHA files of one ach deployment; several processes may share its database."""

    def __init__(self, config: Mapping[str, Any], units: Callable[[], contextlib.AbstractContextManager[Unit]]):
        self.units = units
        self.odfi: str = config["HMS_ACH_ODFI_ROUTING"]
        self.company_id: str = config["HMS_ACH_COMPANY_ID"]
        self.company_name: str = config["HMS_ACH_COMPANY_NAME"]
        self.destination: str = config["HMS_ACH_IMMEDIATE_DESTINATION"] or self.odfi
        self.destination_name: str = config["HMS_ACH_IMMEDIATE_DESTINATION_NAME"]
        self.origin_name: str = config["HMS_ACH_IMMEDIATE_ORIGIN_NAME"] or self.company_name
        self.origin: str = config["HMS_ACH_IMMEDIATE_ORIGIN"].rjust(10) if config["HMS_ACH_IMMEDIATE_ORIGIN"] else ""
        self.description: str = config["HMS_ACH_ENTRY_DESCRIPTION"]
        self.offset_account: str = config["HMS_ACH_OFFSET_ACCOUNT"]
        self.offset_routing: str = config["HMS_ACH_OFFSET_ROUTING"] or self.odfi
        self.offset_type: str = config["HMS_ACH_OFFSET_ACCOUNT_TYPE"]
        self.outbound = Path(config["HMS_ACH_OUTBOUND_DIR"])
        self.inbound = Path(config["HMS_ACH_INBOUND_DIR"])
        self.zone = ZoneInfo(config["HMS_ACH_BANK_TZ"])
        self.cutoffs: list[tuple[int, int]] = config["HMS_ACH_CUTOFFS"]
        self.every: float = config["HMS_ACH_FILE_EVERY_S"]
        self.closed = holidays.financial_holidays("XFED")  # the Federal Reserve's holidays: no ACH settlement
        for folder in (self.outbound, self.inbound, self.inbound / "read"):
            folder.mkdir(parents=True, exist_ok=True)

    # -- when --------------------------------------------------------------------------------------------------
    def last_cutoff(self, now: datetime) -> datetime:
        """The latest cut-off at or before `now`: one of a weekday's HH:MM in the bank's time zone, or (for
        development) the last multiple of HMS_ACH_FILE_EVERY_S seconds."""
        if self.every:
            epoch = now.timestamp() // self.every * self.every
            return datetime.fromtimestamp(epoch, UTC)
        local = now.astimezone(self.zone)
        for back in range(15):
            day = local.date() - timedelta(days=back)
            if not self.banking_day(day):
                continue  # no cut-offs on a weekend or a Federal Reserve holiday: no files are processed then
            past = [c for h, m in self.cutoffs if (c := datetime.combine(day, time(h, m), self.zone)) <= local]
            if past:
                return max(past).astimezone(UTC)
        raise ValueError("HMS_ACH_CUTOFFS: no cut-off in the last two weeks")

    def banking_day(self, day: date) -> bool:
        """A weekday the Federal Reserve's ACH operates (not one of its holidays)."""
        return day.weekday() < 5 and day not in self.closed

    def effective_date(self, cutoff: datetime) -> date:
        """The next banking day after the cut-off's date."""
        day = cutoff.astimezone(self.zone).date() + timedelta(days=1)
        while not self.banking_day(day):
            day += timedelta(days=1)
        return day

    # -- the steps ---------------------------------------------------------------------------------------------
    def run_once(self, stop: threading.Event | None = None) -> int:
        """Finish files a crash left building, make the file of the last cut-off if it is due, and read what the
        bank dropped in the inbound folder; returns how many payments left in files and notices were read."""
        sent = self.read_inbound()
        with self.units() as s:
            building = list(s.scalars(select(AchFile.id).where(AchFile.state == "building").order_by(AchFile.id)))
        for file_id in building:
            sent += self.finish(file_id)
        chosen = self.choose(self.last_cutoff(utcnow()))
        if chosen is not None:
            sent += self.finish(chosen)
        return sent + self.settle()

    def finish(self, file_id: int) -> int:
        """Steps 2 and 3 for a file already chosen."""
        self.write(file_id)
        return self.record(file_id)

    def choose(self, cutoff: datetime) -> int | None:
        """Step 1: the file of `cutoff`, with every payment recorded up to it still pending; None when there is
        no such payment or the file is made already."""
        with self.units() as s:
            s.lock("nacha-files")
            if s.scalar(select(AchFile.id).where(AchFile.cutoff_at == cutoff)) is not None:
                return None
            due = list(
                s.scalars(
                    select(Payment)
                    .where(Payment.state == PaymentState.PENDING, Payment.created_at <= cutoff)
                    .order_by(Payment.created_at, Payment.id)
                    .limit(10000)
                )
            )
            if not due:
                return None
            file_id = (s.scalar(select(func.max(AchFile.id))) or 0) + 1
            created = utcnow()
            today = created.astimezone(self.zone).date()
            same_day = s.scalar(
                select(func.count()).select_from(AchFile).where(AchFile.created_at >= _midnight(today, self.zone))
            )
            modifier = MODIFIERS[int(same_day or 0) % len(MODIFIERS)]
            trace = int(s.scalar(select(Setting.value).where(Setting.key == TRACE_COUNTER)) or 0)
            for p in due:
                trace += 1
                p.state, p.file_id, p.trace_number = PaymentState.SENDING, file_id, self._trace(trace)
                p.claimed_at, p.claimed_by = created, f"file:{file_id}"
            offset_trace = None
            if self.offset_account:  # the balancing debit gets the next trace number: last in its batch
                trace += 1
                offset_trace = self._trace(trace)
            s.merge(Setting(key=TRACE_COUNTER, value=str(trace)))
            s.add(
                AchFile(
                    id=file_id,
                    name=f"HMS-{today:%Y%m%d}-{modifier}-{file_id:06d}.ach",
                    file_id_modifier=modifier,
                    created_at=created,
                    cutoff_at=cutoff,
                    effective_date=self.effective_date(cutoff).isoformat(),
                    entries=len(due),
                    total_cents=sum(_cents(p.amount) for p in due),
                    state="building",
                    offset_trace=offset_trace,
                )
            )
        log.info("ACH file %d chosen: %d entries for the cut-off at %s", file_id, len(due), iso(cutoff))
        return file_id

    def _trace(self, n: int) -> str:
        """Trace number `n` of this originator: the ODFI's first 8 digits and 7 of the counter."""
        return f"{self.odfi[:8]}{n % 10**7:07d}"

    def write(self, file_id: int) -> Path:
        """Step 2: the file into the outbound folder, atomically (flushed, then renamed into place)."""
        with self.units() as s:
            f = s.get_one(AchFile, file_id)
            text = self.render(s, f)
            target = self.outbound / f.name
        part = self.outbound / f".{target.name}.{uuid.uuid4().hex[:12]}.part"  # a writer's own: two may race
        with open(part, "w", encoding="ascii", newline="\n") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.replace(part, target)  # the same bytes whoever renames last
        except FileNotFoundError:  # another writer of this file renamed its own and tidied up this one
            if not target.exists():
                raise
        for stale in self.outbound.glob(f".{target.name}.*.part"):  # left by a writer killed before its rename
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        folder = os.open(self.outbound, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a power cut
        finally:
            os.close(folder)
        return target

    def record(self, file_id: int) -> int:
        """Step 3: the file and its payments are sent; payment.sent for each, in the same transaction."""
        with self.units() as s:
            s.lock(f"nacha-file:{file_id}")  # two workers finishing the same file: the second finds it sent
            f = s.get_one(AchFile, file_id)
            if f.state == "sent":
                return 0
            now = utcnow()
            f.state, f.sent_at = "sent", now
            payments = list(
                s.scalars(select(Payment).where(Payment.file_id == file_id, Payment.state == PaymentState.SENDING))
            )
            for p in payments:
                p.state, p.bank_reference, p.sent_at, p.last_error = PaymentState.SENT, p.trace_number, now, None
                s.emit(
                    "payment.sent",
                    p.event(sentAt=iso(now)),
                    traceparent=p.traceparent,
                )
            name = f.name
        log.info("ACH file %s sent: %d entries", name, len(payments))
        return len(payments)

    def render(self, s: Unit, f: AchFile) -> str:
        """The NACHA text of file `f`, from its rows alone (the same bytes every time)."""
        rows = s.execute(
            select(Payment, Account)
            .join(Account, Account.id == Payment.account_id)
            .where(Payment.file_id == f.id)
            .order_by(Payment.trace_number)
        ).all()
        nacha = NachaFile.create(
            origin_dfi=self.odfi,
            company_id=self.company_id,
            destination_routing=self.destination,
            destination_name=self.destination_name,
            origin_name=self.origin_name,
            file_id_modifier=f.file_id_modifier,
            creation_date=f.created_at.astimezone(self.zone).replace(tzinfo=None),
        )
        batch = nacha.batch(
            sec="PPD", description=self.description, effective_date=f.effective_date, company_name=self.company_name
        )
        for p, a in rows:
            batch.credit(
                name=f"CLAIM {p.claim_id[:13].upper()}",
                routing=a.routing_number,
                account=a.account_number,
                amount_cents=_cents(p.amount),
                account_type=a.account_type,
                id_number=p.claim_id.replace("-", "")[:15].upper(),
            )
        traces = [p.trace_number for p, _ in rows]
        if f.offset_trace:  # a balanced file: one debit of the agency's own account for all the credits
            batch.debit(
                name=self.company_name,
                routing=self.offset_routing,
                account=self.offset_account,
                amount_cents=sum(_cents(p.amount) for p, _ in rows),
                account_type=self.offset_type,
                id_number="OFFSET",
            )
            traces.append(f.offset_trace)
        lines = nacha.render().split("\n")
        # achkit numbers the entries of each batch from 1; ours come from one counter, so that a return or a
        # notification of change names one payment of all the files ever sent.
        entries = iter(traces)
        out = [line[:79] + str(next(entries)) if line.startswith("6") else line for line in lines]
        if self.origin:  # achkit puts the ODFI there; some banks give the originator an id of its own
            out[0] = out[0][:13] + self.origin + out[0][23:]
        return "\n".join(out)

    # -- what the bank holds -----------------------------------------------------------------------------------
    def transfers_by_claim(self, s: Unit) -> dict[str, int]:
        """How many entries of the files in the drop are for each claim (more than one is a double payment); an
        entry whose trace number no payment has counts under `trace:<number>`."""
        traces: Counter[str] = Counter()
        for path in sorted(self.outbound.glob("*.ach")):
            for batch in parse(path.read_text(encoding="ascii"))["batches"]:
                traces.update(e["trace_number"] for e in batch["entries"] if e["txn_code"] in (22, 32))  # credits
        returned = s.scalars(select(Notice.trace_number).where(Notice.code.like("R%"), Notice.payment_id.is_not(None)))
        for trace in set(returned):  # the money came back: that entry is no transfer any more
            traces[trace] -= 1
        traces = +traces
        found = s.execute(select(Payment.trace_number, Payment.claim_id).where(Payment.trace_number.in_(traces)))
        claims = {trace: claim for trace, claim in found}
        out: Counter[str] = Counter()
        for trace, n in traces.items():
            out[claims.get(trace, f"trace:{trace}")] += n
        return dict(out)

    def settle(self, today: date | None = None) -> int:
        """Payments whose file's effective date has come (in the bank's time zone) are settled: payment.settled
        for each, once. A return may still follow (R02–R04 within two banking days, others later)."""
        day = (today or utcnow().astimezone(self.zone).date()).isoformat()
        with self.units() as s:
            s.lock("nacha-settle")  # one payment.settled per payment, however many workers
            due = s.execute(
                select(Payment, AchFile.effective_date)
                .join(AchFile, AchFile.id == Payment.file_id)
                .where(Payment.state == PaymentState.SENT, Payment.settled_at.is_(None), AchFile.effective_date <= day)
                .limit(1000)
            ).all()
            now = utcnow()
            for p, effective in due:
                p.settled_at = now
                s.emit(
                    "payment.settled",
                    p.event(effectiveDate=effective, settledAt=iso(now)),
                    traceparent=p.traceparent,
                )
        return len(due)

    # -- what comes back ---------------------------------------------------------------------------------------
    def read_inbound(self) -> int:
        """Read each return or NOC file the bank dropped, once (by its content), then move it to `read/`."""
        done = 0
        for path in sorted(p for p in self.inbound.iterdir() if p.is_file() and not p.name.startswith(".")):
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # read and moved by another worker meanwhile
                continue
            digest = hashlib.sha256(data).hexdigest()
            with self.units() as s:
                s.lock("nacha-inbound")  # two workers reading the same drop: each file is applied by one
                if s.get(InboundFile, digest) is None:
                    done += self._apply(s, path.name, digest, data)
            with contextlib.suppress(FileNotFoundError):  # another worker moved it first
                os.replace(path, self.inbound / "read" / f"{digest[:12]}-{path.name}")
        return done

    def _apply(self, s: Unit, name: str, digest: str, data: bytes) -> int:
        now, notices = utcnow(), []
        try:
            parsed = parse(data.decode("ascii"))
            for batch in parsed["batches"]:
                for entry in batch["entries"]:
                    for addenda in entry["addenda"]:
                        if addenda["type"] in ("98", "99"):
                            info = addenda["info"].ljust(80)  # the addenda after its type code, padded back
                            notices.append((info[0:3], info[3:18], info[32:61].strip()))
        except (AchError, ValueError, KeyError) as exc:  # not NACHA at all, or not ASCII
            return self._unreadable(s, name, digest, now, exc)
        s.add(InboundFile(sha256=digest, name=name, received_at=now, notices=len(notices)))
        for code, trace, corrected in notices:
            payment = s.scalars(select(Payment).where(Payment.trace_number == trace)).first()
            if payment is None:  # an entry that came back before: its payment has a new trace since
                earlier = s.scalar(select(Notice.payment_id).where(Notice.trace_number == trace).limit(1))
                payment = s.get(Payment, earlier) if earlier else None
            if code.startswith("R"):
                detail = self._returned(s, payment, code, now)
            else:
                detail = self._changed(s, payment, code, corrected)
            s.add(
                Notice(
                    file_sha256=digest,
                    code=code,
                    trace_number=trace,
                    payment_id=payment.id if payment else None,
                    detail=detail,
                    received_at=now,
                )
            )
            if payment is None:
                log.error("ACH %s in %s: no payment has trace number %s", code, name, trace)
        log.info("ACH inbound file %s read: %d returns and notifications of change", name, len(notices))
        return len(notices)

    @staticmethod
    def _unreadable(s: Unit, name: str, digest: str, now: datetime, exc: Exception) -> int:
        error = f"{type(exc).__name__}: {exc}"[:300]
        s.add(InboundFile(sha256=digest, name=name, received_at=now, notices=0, error=error))
        log.error("ACH inbound file %s cannot be read (%s); moved to read/ untouched", name, error)
        return 0

    @staticmethod
    def _returned(s: Unit, payment: Payment | None, code: str, now: datetime) -> str | None:
        """A return: the payment came back; payment.returned tells svc and the citizen."""
        if payment is None or payment.state != PaymentState.SENT:
            return None if payment is None else f"not applied: the payment is {payment.state}"
        reason = describe_return(code) or "returned by the receiving bank"
        payment.state, payment.return_code, payment.last_error = PaymentState.RETURNED, code, f"{code} {reason}"[:300]
        s.emit(
            "payment.returned",
            payment.event(code=code, reason=reason, newDetailsNeeded=code in REISSUABLE, returnedAt=iso(now)),
            traceparent=payment.traceparent,
        )
        log.warning("payment %s for claim %s returned: %s %s", payment.id, payment.claim_id, code, reason)
        return str(reason)

    @staticmethod
    def _changed(s: Unit, payment: Payment | None, code: str, corrected: str) -> str:
        """A notification of change: C01 (account), C02 (routing), C03 (both) correct the stored account, so the
        next payment goes where the bank says; other codes are kept for staff."""
        what = describe_change(code) or "notification of change"
        account = s.get(Account, payment.account_id) if payment and payment.account_id else None
        routing, number = {
            "C01": (None, corrected[:17].strip()),
            "C02": (corrected[:9], None),
            "C03": (corrected[:9], corrected[12:29].strip()),
        }.get(code, (None, None))
        problems = [
            p for p in (routing and routing_number_problem(routing), number and account_number_problem(number)) if p
        ]
        if account is None or (routing is None and number is None) or problems:
            return f"{what}: {corrected!r} not applied" + (f" ({problems[0]})" if problems else "")
        account.routing_number = routing or account.routing_number
        account.account_number = number or account.account_number
        return f"{what}: account corrected for the next payment"

    def reissue(self, s: Unit, req: dict[str, Any]) -> dict[str, Any]:
        """New bank details for a payment that came back R02, R03 or R04: it goes out again at the next cut-off."""
        wrong = bank_details_problem(req)
        if wrong:
            raise ReplyError(422, "Invalid bank details", " ".join(wrong), wrong[0])
        payment = s.scalars(select(Payment).where(Payment.claim_id == req["claimId"])).first()
        if payment is None or payment.citizen != req["citizen"]:
            raise ReplyError(404, "Not found", "no payment for this claim", "claimId")
        s.lock(f"payment:{payment.id}")
        if payment.state != PaymentState.RETURNED or payment.return_code not in REISSUABLE:
            raise ReplyError(
                409, "Not waiting for bank details", f"the payment is {payment.state}, not returned for its account"
            )
        account = Account(
            id=str(uuid.uuid4()),
            citizen=payment.citizen,
            claim_id=None,
            routing_number=req["routingNumber"],
            account_number=req["accountNumber"],
            account_type=req["accountType"],
            registered_at=utcnow(),
        )
        s.add(account)
        payment.account_id, payment.state, payment.next_attempt_at = account.id, PaymentState.PENDING, utcnow()
        payment.trace_number = payment.file_id = payment.settled_at = None  # the old trace stays with its notice
        s.wake("payments")
        return {"paymentId": payment.id, "account": account.masked, "accountType": account.account_type}


def _cents(amount: Decimal | float) -> int:
    return int((Decimal(str(amount)) * 100).to_integral_value())


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)

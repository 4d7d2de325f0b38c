"""NACHA files checked as a bank would check them, with a second, independently written parser.

hms writes its files with achkit; here they are read by elidoran's @ach/ach (JavaScript, from the npm registry,
run with the machine's Node.js), and every total is computed again from what that parser read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent / "nacha"


def parse_independently(path: Path) -> dict[str, Any]:
    """The file as @ach/ach reads it (JSON)."""
    cli = HERE / "node_modules" / "@ach" / "ach" / "bin" / "ach.js"
    if not cli.exists():
        if os.environ.get("CI"):
            pytest.fail("tests/nacha/node_modules is missing: .ci/run installs the NACHA parser with npm ci")
        pytest.skip("the second NACHA parser is not installed: npm ci --prefix tests/nacha")
    node = shutil.which("node") or "node"
    with open(path, "rb") as f:
        out = subprocess.run([node, str(cli), "to", "json"], stdin=f, capture_output=True, timeout=60, check=True)
    return dict(json.loads(out.stdout))


def check_file(
    path: Path, *, odfi: str, company_id: str, company_name: str, offset: str = "", origin: str = ""
) -> list[dict[str, Any]]:
    """Every check an ODFI makes before it takes a file; returns the credit entries (as the second parser read
    them). With `offset` (the agency's account), each batch is balanced by one debit of that account; `origin` is
    the immediate origin the header must carry (default: the ODFI)."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and b"\r" not in raw
    lines = raw.decode("ascii").split("\n")[:-1]
    assert all(len(line) == 94 for line in lines), [len(line) for line in lines if len(line) != 94]
    assert len(lines) % 10 == 0, f"{len(lines)} records: not blocked by 10"
    parsed = parse_independently(path)
    header, control = parsed["file"], parsed["file"]["footer"]
    assert header["recordSize"] == "094" and header["blockingFactor"] == "10" and header["formatCode"] == "1"
    assert header["origin"].strip() == (origin or odfi)
    assert control["blockCount"] == len(lines) // 10
    assert control["batchCount"] == len(parsed["batches"]) >= 1
    entries: list[dict[str, Any]] = []
    file_hash = file_credit = file_debit = file_count = 0
    for batch in parsed["batches"]:
        head, foot = batch, batch["footer"]  # @ach/ach keeps the batch header's fields on the batch
        mixed = 200 if offset else 220  # credits and the offset debit, or credits only
        assert head["entryClassCode"] == "PPD" and int(head["serviceClassCode"]) == mixed
        assert int(foot["serviceClassCode"]) == mixed and foot["companyId"].strip() == company_id
        assert head["companyId"].strip() == company_id
        assert head["companyName"].strip() == company_name
        assert str(head["originatingDFIIdentification"]).zfill(8) == odfi[:8]
        batch_entries = batch["entries"]
        traces = [int(e["traceNumber"]) for e in batch_entries]
        assert traces == sorted(traces) and len(set(traces)) == len(traces), "trace numbers ascend, none twice"
        assert all(str(t).zfill(15).startswith(odfi[:8]) for t in traces)
        credits = sum(e["amount"] for e in batch_entries if str(e["transactionCode"]) in ("22", "32"))
        debits = sum(e["amount"] for e in batch_entries if str(e["transactionCode"]) in ("27", "37"))
        assert credits + debits == sum(e["amount"] for e in batch_entries), "only credits (22, 32) and debits (27, 37)"
        offsets = [e for e in batch_entries if str(e["transactionCode"]) in ("27", "37")]
        if offset:
            assert debits == credits, "a balanced file: the offset debit equals the credits"
            assert [e["dfiAccount"].strip() for e in offsets] == [offset]
        else:
            assert not offsets, "a benefits file holds only credits"
        entry_hash = sum(int(e["receivingDFIIdentification"]) for e in batch_entries) % 10**10
        assert foot["entryAndAddendaCount"] == len(batch_entries)
        assert int(foot["entryHash"]) == entry_hash
        assert (foot["totalCredit"], foot["totalDebit"]) == (credits, debits)
        file_hash, file_credit, file_debit = file_hash + entry_hash, file_credit + credits, file_debit + debits
        file_count += len(batch_entries)
        entries += [{**e, "effectiveDate": head["effectiveDate"]} for e in batch_entries if e not in offsets]
    assert control["entryAndAddendaCount"] == file_count
    assert int(control["entryHash"]) == file_hash % 10**10
    assert (control["totalCredit"], control["totalDebit"]) == (file_credit, file_debit)
    return entries


def bank_file(odfi: str, notices: list[dict[str, Any]]) -> str:
    """What the agency's bank drops in the inbound folder: returns (addenda 99, R-codes) and notifications of
    change (addenda 98, C-codes, in a COR batch) for entries hms sent, as NACHA records written here by hand, the
    bank's side. Each notice: code, trace (of hms's entry), routing and account (as sent), amount (cents),
    corrected (a NOC's corrected data)."""

    def record(*parts: str) -> str:
        line = "".join(parts)
        assert len(line) == 94, (len(line), line)
        return line

    lines = [
        record(
            "101", " ", odfi, " 021000021", "2612011200", "A094101", "AGENCY BANK".ljust(23), "RDFI".ljust(23), " " * 8
        )
    ]
    batches: dict[str, list[dict[str, Any]]] = {}
    for n in notices:
        batches.setdefault("COR" if n["code"].startswith("C") else "PPD", []).append(n)
    total_entries = total_hash = total_credit = 0
    for number, (sec, items) in enumerate(sorted(batches.items()), start=1):
        lines.append(
            record(
                "5200",
                "RECEIVING BANK".ljust(16),
                " " * 20,
                "9876543210",
                sec,
                "RETURN".ljust(10),
                " " * 6,
                "261201",
                "   ",
                "1",
                "02100002",
                f"{number:07d}",
            )
        )
        entry_hash = credit = 0
        for i, n in enumerate(items, start=1):
            amount = 0 if sec == "COR" else n["amount"]
            own_trace = f"02100002{number:03d}{i:04d}"
            lines.append(
                record(
                    "6",
                    "21",
                    n["routing"][:8],
                    n["routing"][8],
                    n["account"].ljust(17),
                    f"{amount:010d}",
                    " " * 15,
                    "BENEFIT".ljust(22),
                    "  ",
                    "1",
                    own_trace,
                )
            )
            if sec == "COR":
                lines.append(
                    record(
                        "798",
                        n["code"],
                        n["trace"],
                        " " * 6,
                        n["routing"][:8],
                        n["corrected"].ljust(29),
                        " " * 15,
                        own_trace,
                    )
                )
            else:
                lines.append(record("799", n["code"], n["trace"], " " * 6, n["routing"][:8], " " * 44, own_trace))
            entry_hash, credit = entry_hash + int(n["routing"][:8]), credit + amount
        lines.append(
            record(
                "8200",
                f"{2 * len(items):06d}",
                f"{entry_hash % 10**10:010d}",
                f"{0:012d}",
                f"{credit:012d}",
                "9876543210",
                " " * 19,
                " " * 6,
                "02100002",
                f"{number:07d}",
            )
        )
        total_entries, total_hash, total_credit = (
            total_entries + 2 * len(items),
            total_hash + entry_hash,
            total_credit + credit,
        )
    blocks = -(-(len(lines) + 1) // 10)
    lines.append(
        record(
            "9",
            f"{len(batches):06d}",
            f"{blocks:06d}",
            f"{total_entries:08d}",
            f"{total_hash % 10**10:010d}",
            f"{0:012d}",
            f"{total_credit:012d}",
            " " * 39,
        )
    )
    lines += ["9" * 94] * (blocks * 10 - len(lines))
    return "\n".join(lines) + "\n"


def drop(folder: Path, name: str, text: str) -> None:
    """Put a file in hms's inbound folder as docs/payments.md asks the bank's SFTP tooling to: written under a hidden
    name, then renamed, so a running rail never reads half of it."""
    hidden = folder / f".{name}"
    hidden.write_text(text)
    os.replace(hidden, folder / name)

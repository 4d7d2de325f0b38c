"""The NATS engine's own reading of JetStream's wire, against nats-py's (an implementation we did not write)."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from hms.bus.nats import ack_problem, delivered

REPLIES = [
    ("$JS.ACK.HMS_EVENTS.svc_on_payment_sent.1.7.7.1764400000000000000.0", 1),
    ("$JS.ACK.HMS_EVENTS.ach_on_claim_approved.12.4031.998.1764400000000000000.25", 12),
    # the form with a domain and an account hash, which nats-py reads for us
    ("$JS.ACK.hub.ACCHASH.HMS_EVENTS.svc_on_payment_sent.3.9.9.1764400000000000000.0.rand", 3),
    ("$JS.ACK._.ACCHASH.HMS_EVENTS.svc_on_payment_sent.5.10.10.1764400000000000000.2.rand", 5),
]


@pytest.mark.parametrize(("reply", "count"), REPLIES)
def test_the_delivery_count_is_what_nats_py_reads_from_the_reply_subject(reply: str, count: int) -> None:
    msg = Msg(None, subject="claim.submitted", reply=reply)  # type: ignore[arg-type]  # no client: nothing is sent
    assert delivered(msg) == count == Msg(None, reply=reply).metadata.num_delivered  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "data", "problem"),
    [
        (None, b'{"stream":"HMS_EVENTS","seq":7}', None),
        (None, b'{"stream":"HMS_EVENTS","seq":7,"duplicate":true}', None),
        (None, b'{"seq":7,"stream":"HMS_EVENTS"}', None),  # another key order: parsed, the same answer
        (None, b'{"error":{"code":503,"description":"no leader"}}', {"code": 503, "description": "no leader"}),
        (None, b'{"stream":"HMS_EVENTS","error":{"code":400}}', {"code": 400}),
        ({"Status": "503"}, b"", "no stream takes claim.approved"),
        (None, b"[]", "unexpected answer []"),
    ],
)
def test_what_a_publish_acknowledgement_says(headers: dict[str, str] | None, data: bytes, problem: object) -> None:
    msg = Msg(None, subject="_INBOX.x.1", data=data, headers=headers)  # type: ignore[arg-type]
    assert ack_problem(msg, "claim.approved") == problem


def test_an_unreadable_acknowledgement_is_a_problem() -> None:
    msg = Msg(None, subject="_INBOX.x.1", data=b"{not json")  # type: ignore[arg-type]
    assert str(ack_problem(msg, "claim.approved")).startswith("unreadable answer:")

"""The NATS engine's own reading of JetStream's wire, against nats-py's (an implementation we did not write)."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from hms.bus.nats import delivered

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

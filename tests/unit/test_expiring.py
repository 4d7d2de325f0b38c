"""What Bus.update keeps per key (both engines): a value until its time, and no more than it must."""

from __future__ import annotations

from hms.bus.base import Expiring


def test_an_expired_value_is_never_returned_and_expired_ones_are_forgotten() -> None:
    kept = Expiring()
    kept.put(("b", "k"), b"v", until=10.0, now=0.0)
    assert kept.get(("b", "k"), 9.9) == b"v"
    assert kept.get(("b", "k"), 10.0) is None
    assert kept.get(("b", "other"), 0.0) is None
    for i in range(10_000):  # each key lives one second: at most a few are alive at once
        kept.put(("b", str(i)), i, until=i + 1.0, now=float(i))
    assert len(kept._items) <= 1025
    assert kept.get(("b", "9999"), 9_999.5) == 9999

"""`hms up` and `hms worker` leave what startup made out of every later garbage collection."""

from __future__ import annotations

import gc

from hms.cli import _settle


def test_settling_leaves_what_exists_now_out_of_later_collections() -> None:
    gc.collect()  # what is garbage now is not what startup leaves to keep
    alive = len(gc.get_objects())
    try:
        _settle()
        assert gc.get_freeze_count() >= alive * 0.9
        assert len(gc.get_objects()) < alive * 0.1  # what a later full collection walks
    finally:
        gc.unfreeze()

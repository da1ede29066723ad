"""Count work instead of timing it.

Wall-clock assertions fail on a loaded machine (CI shares two cores), so tests that check that
something is fast or grows linearly count the calls it makes instead: every Python function call
and every call into C (numpy, zlib, a numba kernel), in this thread and in threads started while
counting. The count is the same on any machine and under any load.
"""

from __future__ import annotations

import sys
import threading


def count_calls(fn, *args, **kwargs) -> tuple[int, object]:
    """(number of calls made while running ``fn(*args, **kwargs)``, its result). Exceptions propagate."""
    n = 0

    def profile(frame, event, arg):
        nonlocal n
        if event == "call" or event == "c_call":
            n += 1

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        result = fn(*args, **kwargs)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return n, result

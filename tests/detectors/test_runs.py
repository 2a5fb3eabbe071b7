"""The vectorized building blocks against obvious loops."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.runs import lower_bound, next_true, run_starts


@settings(deadline=None)
@given(st.lists(st.booleans(), max_size=50))
def test_next_true(mask: list[bool]) -> None:
    got = next_true(np.array(mask, dtype=np.bool_)).tolist()
    want = [next((j for j in range(i, len(mask)) if mask[j]), len(mask)) for i in range(len(mask))]
    assert got == want


@settings(deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=50),
    st.one_of(st.none(), st.floats(-10, -1)),
)
def test_run_starts(flags: list[tuple[bool, bool]], carried_start: float | None) -> None:
    cond = np.array([c for c, _ in flags])
    restart = np.array([r for _, r in flags])
    restart[0] = True
    t = np.arange(len(flags), dtype=np.float64)
    carried = np.full(len(flags), np.nan)  # a run open at the end of the previous batch, if any
    if carried_start is not None:
        carried[0] = carried_start
    got = run_starts(cond, t, restart, carried)
    start = carried_start
    for i in range(len(flags)):
        if i > 0 and restart[i]:
            start = None
        if cond[i]:
            start = t[i] if start is None else start
            assert got[i] == start
        else:
            start = None
            assert math.isnan(got[i])


@settings(deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=30), st.data())
def test_lower_bound(values: list[int], data: st.DataObject) -> None:
    t = np.array(sorted(values), dtype=np.float64)
    lo = data.draw(st.integers(0, len(t)))
    hi = data.draw(st.integers(lo, len(t)))
    x = data.draw(st.floats(-1, 22))
    got = lower_bound(t, np.array([lo]), np.array([hi]), np.array([x]))[0]
    assert got == next((i for i in range(lo, hi) if t[i] >= x), hi)

"""bench/decode_floor.py's floor arithmetic on hand-checked cases (the timings are the bench's)."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def floor():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("decode_floor", BENCH / "decode_floor.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))


def test_envelope_takes_the_fastest_library_and_never_decreases(floor):
    step = {1: {"xla": 5.0, "torch": 9.0}, 2: {"xla": 4.0, "torch": 8.0},
            4: {"xla": 7.0, "torch": 6.0}, 8: {"xla": 10.0, "torch": 12.0}}
    # fastest: 5, 4, 6, 10; a 1-row step costs no more than a 2-row one: 4, 4, 6, 10
    assert floor.envelope(step) == {1: 4.0, 2: 4.0, 4: 6.0, 8: 10.0}


def test_step_floor_uses_the_largest_measured_row_count_not_above(floor):
    env = {1: 4.0, 2: 4.0, 4: 6.0, 8: 10.0}
    assert [floor.step_floor(env, b) for b in (1, 3, 4, 7, 8, 20)] == [4.0, 4.0, 6.0, 6.0,
                                                                        10.0, 10.0]


def test_floor_seconds_counts_each_position_at_its_live_rows(floor):
    env = {1: 1.0, 2: 2.0, 4: 3.0}
    # budgets 1, 2, 5: position 0 has 3 rows (env 2), position 1 two (2), positions 2-4 one (1)
    # -> 2 + 2 + 3 * 1 = 7 s of decode, plus 10 prompt tokens at 0.5 s
    assert floor.floor_seconds(env, 0.5, [1, 2, 5], 10) == pytest.approx(12.0)
    # fixed-length rows: every step at the full batch
    assert floor.floor_seconds(env, 0.0, [3] * 4, 0) == pytest.approx(9.0)


def test_live_rows_counts_the_rows_still_running(floor):
    assert floor.live_rows([1, 2, 5]) == [3, 2, 1, 1, 1]

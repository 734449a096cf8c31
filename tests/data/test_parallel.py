"""The ordered, bounded parallel map the data stages share."""

from __future__ import annotations

import pytest

from tunepipe.data.parallel import ordered_map, worker_count


def square_slowly_first(x: int) -> int:
    if x == 0:
        import time

        time.sleep(0.2)  # the first item finishes last; the output order must not change
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_back_in_input_order(workers: int) -> None:
    assert list(ordered_map(square_slowly_first, range(50), workers)) == [x * x for x in range(50)]


def test_the_input_is_read_only_a_window_ahead() -> None:
    pulled = []

    def source():
        for i in range(1000):
            pulled.append(i)
            yield i

    results = ordered_map(square_slowly_first, source(), workers=2, window=4)
    assert next(results) == 0
    assert len(pulled) <= 5  # never the whole input, unlike multiprocessing.Pool.imap
    assert list(results)[-1] == 999 * 999


@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_error_reaches_the_caller(workers: int) -> None:
    with pytest.raises(ValueError, match="three"):
        list(ordered_map(fail_on_three, range(10), workers))


def test_worker_count_follows_the_stage_budget() -> None:
    assert worker_count(1) == 1 and worker_count(3) == 3 and worker_count(None) >= 1

"""``ordered_map`` on Ray Data (the session's in-process Ray, 2 CPUs): the local map's results, in
order, its initializer once per worker process, the original error, a bounded read-ahead."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray_local import ray_local  # noqa: F401  (the session's Ray instance)

from tunepipe.data.parallel import ordered_map, worker_count
from tunepipe.errors import StageInputError

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module", autouse=True)
def _functions_by_value() -> Iterator[None]:
    """Ray workers cannot import this test module (pytest put its folder on sys.path only here):
    its functions travel by value instead."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def remember(path: str, offset: str) -> None:
    """The initializer: notes its process and sets state the mapped function reads."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    os.environ["TP_TEST_OFFSET"] = offset


def shifted_square(x: int) -> tuple[int, int]:
    if x == 0:
        time.sleep(0.3)  # the first item finishes last; the output order must not change
    return x * x + int(os.environ["TP_TEST_OFFSET"]), os.getpid()


def shifted_square_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def square_slowly_first(x: int) -> int:
    if x == 0:
        time.sleep(1.0)
    return x * x


def pid_of(_: Any) -> int:
    return os.getpid()


def bad_line_three(x: int) -> int:
    if x == 3:
        raise StageInputError("data.jsonl:3: not valid JSON")
    return x


def test_results_come_back_in_input_order_from_ray_workers_initialised_once_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TP_TEST_OFFSET", "0")
    local = [r for r, _ in ordered_map(shifted_square, range(40), 1, initializer=remember,
                                       initargs=(str(tmp_path / "local"), "7"))]
    out = list(ordered_map(shifted_square, range(40), 2, engine="ray", initializer=remember,
                           initargs=(str(tmp_path / "ray"), "7")))
    assert [r for r, _ in out] == local == [x * x + 7 for x in range(40)]
    workers = {pid for _, pid in out}
    assert os.getpid() not in workers  # the items ran in Ray worker processes
    started = [int(pid) for pid in (tmp_path / "ray").read_text().split()]
    assert sorted(started) == sorted(workers)  # the initializer ran once in each of them, not once per item


def test_the_input_is_read_only_a_window_ahead() -> None:
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for i in range(60):
            pulled.append(i)
            yield i

    results = ordered_map(square_slowly_first, source(), 2, window=4, engine="ray")
    assert next(results) == 0
    assert len(pulled) <= 5  # four in flight and the next one: never the whole input
    assert list(results) == [x * x for x in range(1, 60)]


def test_a_worker_error_fails_with_the_original_exception_and_the_next_map_runs() -> None:
    with pytest.raises(StageInputError, match=r"^data.jsonl:3: not valid JSON$") as info:
        list(ordered_map(bad_line_three, range(10), 2, engine="ray"))
    assert "bad_line_three" in str(info.value.__cause__)  # the worker's traceback, for the stage's log
    assert list(ordered_map(bad_line_three, range(3), 2, engine="ray")) == [0, 1, 2]


def test_one_item_stays_in_this_process_and_the_cluster_sets_the_worker_count() -> None:
    assert list(ordered_map(pid_of, ["only"], 2, engine="ray")) == [os.getpid()]  # no dataset for one block
    assert worker_count(1, "ray") == 2  # the instance's 2 CPUs: this driver holds none of them
    assert worker_count(1) == 1  # locally the stage's own budget


class _Holder:
    """An actor that holds CPUs, as running stage tasks do."""

    def ready(self) -> bool:
        return True


def _wait_for_free_cpus(ray: Any, want: float) -> None:
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0.0) != want:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.1)


def test_with_every_cpu_held_by_other_stages_the_map_runs_in_this_process(ray_local: Any) -> None:  # noqa: F811
    """Other stage tasks hold every CPU: Ray Data's tasks could never start, so the map runs here
    (and gives the same results); once CPUs are free again it goes back to Ray workers."""
    holder = ray_local.remote(_Holder).options(num_cpus=2).remote()
    try:
        ray_local.get(holder.ready.remote())
        _wait_for_free_cpus(ray_local, 0.0)
        assert list(ordered_map(shifted_square_pid, range(12), 2, engine="ray")) == \
            [(x * x, os.getpid()) for x in range(12)]
    finally:
        ray_local.kill(holder)
    _wait_for_free_cpus(ray_local, 2.0)
    assert os.getpid() not in {pid for _, pid in ordered_map(shifted_square_pid, range(12), 2, engine="ray")}


def test_a_local_pool_in_a_process_running_ray_does_not_fork_it() -> None:
    """Ray's threads may hold locks when this process forks, and a forked worker would wait on them
    for good: with Ray up here, the local engine's workers come from a forkserver instead."""
    from procs import parent_pid

    parents = set(ordered_map(parent_pid, range(8), 2, engine="local"))
    assert len(parents) == 1 and os.getpid() not in parents  # all from one forkserver, none forked from here


def test_the_local_engine_never_imports_ray() -> None:
    code = ("import sys\nfrom tunepipe.data.parallel import ordered_map, worker_count\n"
            "from tunepipe.stages import clean, format, ingest, split\n"
            "assert list(ordered_map(abs, [-1, -2, -3], worker_count(1), engine='local')) == [1, 2, 3]\n"
            "from procs import parent_pid\nimport os\n"
            "assert set(ordered_map(parent_pid, range(4), 2)) == {os.getpid()}, 'not forked from here'\n"
            "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray was imported'\n")
    support = str(Path(__file__).parents[1] / "support")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": support})
    assert done.returncode == 0, done.stderr

"""What a fresh worker process per stage costs on Ray (the Ray executor's ``max_calls=1``).

The Ray executor runs every stage task in a new Ray worker process, so that a stage's memory goes
back to the node when it ends and nothing one stage leaves in its process reaches the next
(docs/scale-out.md, "One process per stage"). The price is a process start and the imports a
stage task needs, per stage. This measures it on a local Ray (``ray.init(address="local")``):
``--tasks`` tasks one after another, each doing what ``run_on_ray`` does before its stage's own
work (import ``tunepipe.execute`` and ``tunepipe.session``, open a cache folder, ask its node id),
once with a reused worker (Ray's default) and once with a fresh process each (``max_calls=1``).
The figure is the median wall time from submit to result, per task; the first task of each kind
is left out (it pays Ray's worker pool warm-up either way).

    python benchmarks/bench_ray_process.py --tasks 12
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def stage_task_start(location: str) -> int:
    """The part of ``run_on_ray`` that runs before a stage's own work."""
    import ray

    from tunepipe.execute import execute  # noqa: F401  (what a stage task imports)
    from tunepipe.session import open_store

    ray.get_runtime_context().get_node_id()
    open_store(location)
    return os.getpid()


def timed(fn, location: str, tasks: int) -> tuple[list[float], int]:  # type: ignore[no-untyped-def]
    """Seconds per task, one after another (as dependent stages run), and how many processes ran them."""
    import ray

    seconds, pids = [], set()
    for _ in range(tasks):
        start = time.perf_counter()
        pids.add(ray.get(fn.remote(location)))
        seconds.append(time.perf_counter() - start)
    return seconds[1:], len(pids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=12)
    args = parser.parse_args()
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as cache:
        for name, fn in (("reused worker", ray.remote(stage_task_start)),
                         ("fresh process (max_calls=1)", ray.remote(max_calls=1)(stage_task_start))):
            seconds, processes = timed(fn, cache, args.tasks)
            print(f"{name:30} median {statistics.median(seconds):6.3f} s per task  "
                  f"(min {min(seconds):.3f}, max {max(seconds):.3f}; {processes} processes for {args.tasks} tasks)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()

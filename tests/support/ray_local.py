"""A Ray instance in this test process (``ray.init(address="local")``), started once per session.

``address="local"`` always starts a fresh instance: without it ``ray.init()`` would join any
cluster it finds (``RAY_ADDRESS``, or a ``ray start`` of another test). Tests that need a real
multi-node cluster use :mod:`ray_cluster` and run the CLI in a subprocess instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield ray
    ray.shutdown()

from ray_cluster import ray_cluster  # noqa: F401  (pytest fixture)

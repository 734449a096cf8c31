"""Running stages on a cluster: the Ray executor (``--executor ray``). Imported only when used."""

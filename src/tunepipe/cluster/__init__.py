"""Running on a Ray cluster: the Ray executor (``--executor ray``, ray_executor.py) and the record
stages' ordered map on Ray Data (ray_data.py). Imported only when used."""

"""Experiment trackers: each finished ``pipeline run`` becomes a run in MLflow (or another tracker).

Optional and outside the cache: ``tracking:`` in the pipeline file (or ``pipeline run --track``)
names the trackers; they never enter a cache key and never fail a run (an error is one warning
line). :mod:`~tunepipe.tracking.contract` is the plugin contract, :mod:`~tunepipe.tracking.registry`
finds trackers (built-in ``mlflow``, entry-point group ``tunepipe.trackers``) and
:mod:`~tunepipe.tracking.report` turns a finished run into tracker calls.
"""

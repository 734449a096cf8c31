"""The MLflow tracker: one MLflow run per ``pipeline run``, through ``MlflowClient`` (no global state).

``uri`` is a folder by default (``./mlruns`` next to the pipeline file): it holds an SQLite
database (``mlflow.db``) and the artifacts (``artifacts/``), MLflow's supported local store, no
server; read it with ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``. (MLflow 3.17+
refuses its older plain-folder store unless ``MLFLOW_ALLOW_FILE_STORE=true``.) A URI with a scheme
(``http://host:5000``, ``sqlite:///x.db``, ``databricks``, ``file:`` with that variable set) goes
to MLflow as it is.

Needs the mlflow extra (``pip install 'tunepipe[mlflow]'``: mlflow-skinny with SQLAlchemy and
alembic). Importing mlflow takes 1-2 s and opening the SQLite store about 1 s more (measured on a
2-core machine), so both happen only when a run ends, never at validation.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tunepipe.errors import UserError
from tunepipe.status import Status
from tunepipe.tracking.contract import Metric, RunStart

DEFAULT_URI = "./mlruns"
DATABASE = "mlflow.db"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # two letters at least: C:\mlruns is a path
_STATUS = {Status.OK: "FINISHED", Status.FAILED: "FAILED", Status.INTERRUPTED: "KILLED"}
_SYSTEM_TAGS = {"git.commit": "mlflow.source.git.commit", "tunepipe.spec": "mlflow.source.name"}
_BATCH = {"params": 100, "tags": 100, "metrics": 1000}  # MLflow's limits per log_batch call
_INSTALL = "pip install 'tunepipe[mlflow]'"
OFFLINE = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")  # set unless the user set them


def store_uri(uri: str, base: Path) -> tuple[str, Path | None]:
    """(tracking URI, the store's folder): a folder (relative to ``base``) holds an SQLite store and
    the artifacts; a URI with a scheme is MLflow's to interpret (and its server's: no folder)."""
    if uri == "databricks" or _SCHEME.match(uri):
        return uri, None
    folder = (base / Path(uri).expanduser()).resolve()
    return f"sqlite:///{(folder / DATABASE).as_posix()}", folder


def _require(uri: str) -> None:
    """A missing library is named with the command that installs it, not as a traceback."""
    wanted = ["mlflow"] + (["sqlalchemy", "alembic"] if uri.startswith("sqlite:") else [])
    missing = [m for m in wanted if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: {_INSTALL}")
    if uri.startswith("file:") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        raise UserError(f"MLflow refuses the file store {uri} unless MLFLOW_ALLOW_FILE_STORE=true is set: set it, "
                        "or write the folder without 'file:' (an SQLite store in it)")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow's INFO lines (creating the database) and its warnings stay out of the run's output:
    what goes wrong is raised and becomes the run's one warning line."""
    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class MlflowTracker:
    """Logs a finished run to MLflow."""

    name = "mlflow"
    settings_schema: Mapping[str, Any] = {
        "type": "object", "additionalProperties": False,
        "properties": {
            "uri": {"type": "string", "minLength": 1, "default": DEFAULT_URI,
                    "description": "A folder, relative to the pipeline file (an SQLite store and the artifacts "
                                   "in it), or an MLflow tracking URI (http://host:5000, sqlite:///x.db, "
                                   "databricks)."},
            "experiment": {"type": "string", "minLength": 1,
                           "description": "The MLflow experiment (default: the pipeline's name)."},
        },
    }

    def __init__(self) -> None:
        self._client: Any = None
        self._run_id = ""

    def start(self, run: RunStart) -> None:
        uri, folder = store_uri(str(run.settings.get("uri") or DEFAULT_URI), run.base)
        _require(uri)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        artifacts = (folder / "artifacts").as_uri() if folder is not None else None
        for name in OFFLINE:  # MLflow would send usage data home: tunepipe sends nothing anywhere
            os.environ.setdefault(name, "true")
        importlib.import_module("mlflow")  # first: importing it sets its loggers' levels, which _quiet raises
        with _quiet():
            from mlflow.entities import Param, RunTag
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=uri)
            experiment = self._experiment(str(run.settings.get("experiment") or run.experiment), artifacts)
            self._run_id = self._client.create_run(experiment, run_name=run.run_name).info.run_id
            tags = [RunTag(_SYSTEM_TAGS.get(k, k), v) for k, v in run.tags.items()]
            self._batches(params=[Param(k, v) for k, v in run.params.items()], tags=tags)

    def _experiment(self, name: str, artifacts: str | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self._client.get_experiment_by_name(name)
        if found is None:
            try:
                return str(self._client.create_experiment(name, artifact_location=artifacts))
            except MlflowException:  # another run created it meanwhile
                found = self._client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            raise UserError(f"the MLflow experiment '{name}' is deleted: restore it (mlflow experiments restore) "
                            "or name another in tracking.mlflow.experiment")
        return str(found.experiment_id)

    def _batches(self, **items: Sequence[Any]) -> None:
        for kind, values in items.items():
            for chunk in _chunks(values, _BATCH[kind]):
                self._client.log_batch(self._run_id, **{kind: list(chunk)})

    def log_metrics(self, metrics: Sequence[Metric]) -> None:
        from mlflow.entities import Metric as MlflowMetric

        now = int(time.time() * 1000)
        with _quiet():
            self._batches(metrics=[MlflowMetric(m.key, m.value, now, m.step) for m in metrics])

    def log_artifact(self, path: Path, folder: str) -> None:
        with _quiet():
            self._client.log_artifact(self._run_id, str(path), artifact_path=folder or None)

    def end(self, status: str) -> None:
        if self._run_id:
            with _quiet():
                self._client.set_terminated(self._run_id, _STATUS.get(status, "FAILED"))

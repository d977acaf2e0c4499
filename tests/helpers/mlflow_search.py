"""Searching an MLflow store from a test without leaking its URI into later tests."""

from __future__ import annotations

import os
from typing import Any


def search_runs(uri: str, experiment: str, **kwargs: Any):
    """``mlflow.search_runs`` on the store at ``uri`` (a DataFrame). The fluent API reads a
    process-global URI, and ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into
    ``os.environ``: left set, a later test's own store (its monkeypatched variable) is shadowed
    and its searches find nothing. Both are put back as found."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved_global, saved_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=[experiment], **kwargs)
    finally:
        utils._tracking_uri = saved_global
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env

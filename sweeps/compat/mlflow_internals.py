"""MLflow's private parts the engine uses: the step of each metric's latest value in a run, its schema's head."""

from __future__ import annotations

from typing import Any


def latest_steps(run: Any) -> dict[str, int]:
    """``{metric key: step of its latest value}`` in ``run`` (an ``mlflow.entities.Run``).

    ``run.data.metrics`` holds the latest values without their steps; the metric objects behind
    it carry them. Without those (another MLflow), every key counts as logged up to step 0.
    """
    objects = getattr(run.data, "_metric_objs", None)
    if objects is None:
        return {key: 0 for key in run.data.metrics}
    return {m.key: int(m.step) for m in objects}


def last_activity_ms(run: Any) -> int:
    """When ``run`` (an ``mlflow.entities.Run``) last logged a metric, in ms; its start when it logged none.

    The latest value of each metric carries its timestamp; without those (another MLflow), the start.
    """
    stamps = [int(m.timestamp) for m in getattr(run.data, "_metric_objs", None) or ()]
    return max(stamps, default=int(run.info.start_time or 0))


def schema_head() -> str | None:
    """The schema revision a store of this MLflow must be at (alembic's head); None if MLflow cannot say."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        return str(_get_latest_schema_revision())
    except Exception:  # noqa: BLE001 - another MLflow: the caller does without
        return None


SEARCH_ENDPOINT = "/api/2.0/mlflow/experiments/search"


def probe_tracking_server(uri: str, timeout: float) -> tuple[int, str]:
    """Ask the server at ``uri`` for one experiment, once, as MLflow's client would; ``(HTTP status, body)``.

    Through MLflow's own request code, so the credentials MLflow would send are sent
    (``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``/``_TOKEN``, ``~/.mlflow/credentials``, TLS
    settings), with no retries and ``timeout`` seconds each to connect and to read. Without that
    code (another MLflow), a plain GET with no credentials. Network errors are raised.
    """
    try:
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request
    except ImportError:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}{SEARCH_ENDPOINT}?max_results=1", timeout=timeout) as reply:
                return int(reply.status), reply.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode("utf-8", "replace")
    response = http_request(
        get_default_host_creds(uri),
        SEARCH_ENDPOINT,
        "GET",
        max_retries=0,
        backoff_factor=0,
        timeout=timeout,
        raise_on_status=False,
        params={"max_results": 1},
    )
    return int(response.status_code), str(response.text)

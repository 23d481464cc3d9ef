"""Links into the MLflow UI that open on a sweep's trials: a sorted table, and the top trials compared.

MLflow 3.17's URL holds little view state (the experiment page's search facets, and
``compareRunsMode``); its ``#/compare-runs?runs=[...]&experiments=[...]`` page opens on the first
three parameters in alphabetical order against the first metric a run has (a per-step ``loss``),
and neither can be chosen in the URL. What the UI does take from a link is a *shared view*: an
experiment tag ``mlflow.sharedViewState.<key>`` holding the view as JSON (search filter, sort,
columns, charts), opened by ``#/experiments/<id>/runs?viewStateShareKey=<key>``. Two per sweep:

- ``trials``: the sweep's trials only (no parent to expand), the completed ones first, best first
  by their final value (``sweep/final``: a pruned trial's earlier-epoch value ranked among them), then the rest,
  the metric and the swept parameters (in the spec's order) as the first columns, then status and
  the reason, wide enough to read;
- ``top``: the top-k completed trials in the chart view, a section first holding a parallel-
  coordinates chart of the swept parameters against the metric and the metric per epoch.

The view is the UI's own: a person can change it and keep it ("Override saved view").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial
from typing import Any

from sweeps.core.keys import COMPLETED, FINAL_KEY, ROLE_PARENT, ROLE_TRIAL, TAG_NAME, TAG_REASON, TAG_ROLE, TAG_STATUS
from sweeps.tracking.mlflow_client import client, retry

SHARED_VIEW_TAG = "mlflow.sharedViewState."
TOP_K = 5
SECTION = "sweep-top-trials"
NOTE_TAG = "mlflow.note.content"


@dataclass
class SweepViews:
    """A sweep's two shared views in its experiment."""

    sweep: str
    experiment_id: str
    metric: str
    params: list[str]
    trials_key: str
    top_key: str
    top: int

    def trials_url(self, server: str) -> str:
        """The sweep's trials, best first, with the metric and swept parameters as columns."""
        return view_url(server, self.experiment_id, self.trials_key)

    def top_url(self, server: str) -> str:
        """The top trials compared on the swept parameters against the metric (the chart view)."""
        return view_url(server, self.experiment_id, self.top_key, charts=True)


ML_WORKFLOW = "&workflowType=machine_learning"
"""MLflow 3.17's UI shows an experiment's training-runs sidebar with it (its GenAI one without)."""


def view_url(server: str, experiment_id: str, key: str, charts: bool = False) -> str:
    """The UI's link to the shared view ``key`` of an experiment (``server`` empty: a link within the UI)."""
    mode = "&compareRunsMode=CHART" if charts else ""  # and the training-runs sidebar, not the GenAI one
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={key}{mode}{ML_WORKFLOW}"


def view_key(sweep: str, kind: str) -> str:
    """The shared view's key: from the sweep's name, so a later save replaces it."""
    return f"sweep-{hashlib.sha1(sweep.encode()).hexdigest()[:12]}-{kind}"


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _columns(metric: str, params: list[str]) -> list[str]:
    return [
        f"metrics.`{metric}`",
        *[f"params.`{name}`" for name in params],
        f"tags.`{TAG_STATUS}`",
        f"tags.`{TAG_REASON}`",
    ]


def trials_view(sweep: str, metric: str, mode: str, params: list[str]) -> dict[str, Any]:
    """The shared view of the sweep's trials (see the module docstring)."""
    return {
        "searchFilter": f"tags.`{TAG_NAME}` = {_quoted(sweep)} AND tags.`{TAG_ROLE}` != '{ROLE_PARENT}'",
        # the completed trials' final value: they come first, best first; the rest after (no such metric)
        "orderByKey": f"metrics.`{FINAL_KEY}`",
        "orderByAsc": mode == "min",
        "selectedColumns": _columns(metric, params),
        "columnOrder": _columns(metric, params),
        "columnWidths": {f"tags.`{TAG_REASON}`": 360},  # a stop's reason, readable
    }


def top_view(metric: str, mode: str, params: list[str], run_ids: list[str]) -> dict[str, Any]:
    """The shared view of the top trials in the chart view (see the module docstring)."""
    wanted = ", ".join(_quoted(run_id) for run_id in run_ids) or "''"
    common = {"runsCountToCompare": 10, "metricSectionId": SECTION, "deleted": False, "isGenerated": False}
    parallel = {
        **common,
        "uuid": f"{SECTION}-parallel",
        "type": "PARALLEL",
        "selectedParams": params,
        "selectedMetrics": [metric],
        "showAllRuns": False,
    }
    per_epoch = {
        **common,
        "uuid": f"{SECTION}-per-epoch",
        "type": "LINE",
        "metricKey": metric,
        "xAxisKey": "step",
        "xAxisScaleType": "linear",
        "scaleType": "linear",
        "lineSmoothness": 0,
        "range": {},
        "displayPoints": True,
        "selectedXAxisMetricKey": "",
        "yAxisKey": "metric",
        "yAxisExpressions": [],
        "ignoreOutliers": False,
        "useGlobalXaxisKey": False,
        "useGlobalLineSmoothing": False,
    }
    section = {
        "uuid": SECTION,
        "name": f"Top {len(run_ids)} trials by {metric}",
        "display": True,
        "isReordered": True,
        "deleted": False,
        "isGenerated": False,
        "columns": 2,
        "cardHeight": 420,
    }
    return {
        "searchFilter": f"attributes.run_id IN ({wanted})",
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": mode == "min",
        "selectedColumns": _columns(metric, params),
        "columnOrder": _columns(metric, params),
        "compareRunCharts": [parallel, per_epoch],
        "compareRunSections": [section],
        "isAccordionReordered": True,
    }


def save_views(
    uri: str, experiment_id: str, sweep: str, metric: str, mode: str, params: list[str], top_run_ids: list[str]
) -> SweepViews:
    """Store the sweep's two shared views as experiment tags (replacing earlier ones); return them."""
    store = client(uri)
    charted = params_of_all(store, experiment_id, params, top_run_ids)
    keys = view_key(sweep, "trials"), view_key(sweep, f"top{len(top_run_ids)}")
    views = SweepViews(sweep, experiment_id, metric, charted, *keys, top=len(top_run_ids))
    for key, view in (
        (views.trials_key, trials_view(sweep, metric, mode, params)),
        (views.top_key, top_view(metric, mode, charted, top_run_ids)),
    ):
        text = json.dumps(view, separators=(",", ":"))
        retry(partial(store.set_experiment_tag, experiment_id, SHARED_VIEW_TAG + key, text), "save a UI view")
    return views


def params_of_all(store: Any, experiment_id: str, params: list[str], run_ids: list[str]) -> list[str]:
    """The ``params`` every one of the runs has: MLflow's parallel-coordinates chart leaves out a run without one.

    A user's top 5 showed 2 lines: the sweep's best and two others ran at fp32, where the
    conditional ``init_scale`` is not drawn.
    """
    if not run_ids:
        return params
    wanted = ", ".join(_quoted(run_id) for run_id in run_ids)
    runs = retry(lambda: store.search_runs([experiment_id], f"attributes.run_id IN ({wanted})"), "read the top runs")
    return [name for name in params if all(name in run.data.params for run in runs)]


def parent_note(views: SweepViews, best: str) -> str:
    """The parent run's description: what the sweep found, and links to its two views (within the UI)."""
    return "\n".join(
        [
            f"**Sweep {views.sweep}**. {best}",
            "",
            f"- [Its trials, best first by {views.metric}]({view_url('', views.experiment_id, views.trials_key)})",
            f"- [The top {views.top} compared: {', '.join(views.params)} against {views.metric}]"
            f"({view_url('', views.experiment_id, views.top_key, charts=True)})",
            "- The report: artifacts, `report/report.html`",
        ]
    )


def sweep_views(uri: str, experiment_id: str, top: int = TOP_K, sweep: str | None = None) -> SweepViews | None:
    """Save (again) the views of the experiment's latest sweep, or of ``sweep``; None when it has none.

    Read from MLflow alone: the parent run's ``metric``, ``mode`` and ``searched`` parameters and
    the sweep's completed trials, so it works for any sweep in the store.
    """
    store = client(uri)
    query = f"tags.`{TAG_ROLE}` = '{ROLE_PARENT}'" + (f" AND tags.`{TAG_NAME}` = {_quoted(sweep)}" if sweep else "")
    parents = store.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        return None
    parent = parents[0]
    params = parent.data.params
    metric, mode = params.get("metric", ""), params.get("mode", "min")
    if not metric:
        return None
    searched = [name for name in params.get("searched", "").split(",") if name]
    trials = (
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' AND tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'"
        f" AND tags.`{TAG_STATUS}` = '{COMPLETED}'"
    )
    order = f"metrics.`{metric}` {'ASC' if mode == 'min' else 'DESC'}"
    best = store.search_runs([experiment_id], trials, order_by=[order], max_results=top)
    name = parent.data.tags.get(TAG_NAME, parent.info.run_name or "")
    return save_views(uri, experiment_id, name, metric, mode, searched, [r.info.run_id for r in best])

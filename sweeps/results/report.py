"""A sweep's report: results table, stop decisions, sample images, plots, one self-contained HTML page.

The table is written as Parquet (pyarrow) and CSV.
Written into the sweep's folder at the end of a run (and logged to the parent MLflow run);
``sweeps report SWEEP`` prints the table and rewrites the page from the folder, with the stop
decisions read again from MLflow (an audit made since shows up). The page is ``sweeps.results.page``,
the plots ``sweeps.results.figures``.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any

import optuna
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq

from sweeps.core.keys import (
    COMPLETED,
    DIVERGED,
    PRUNED,
    TAG_AUDIT_METRIC,
    TAG_AUDIT_RUN,
    TAG_AUDIT_VERDICT,
    TAG_WOULD_STOP_REASON,
    TAG_WOULD_STOP_SIGNAL,
    TAG_WOULD_STOP_STEP,
)
from sweeps.core.records import SweepState, metric_text, step_epoch
from sweeps.results.figures import (
    Curve,
    draw_contour,
    draw_importances,
    draw_learning_curves,
    optuna_html,
    optuna_pngs,
    quiet,
)
from sweeps.results.from_mlflow import download_images, metric_history, tagged_runs
from sweeps.results.page import IMPORTANCE_TRIALS, epochs_text, html_page, ordered, row_reason, searched, short
from sweeps.store.study import is_told

__all__ = ["html_page", "read_results", "result_rows", "terminal_table", "write_report", "write_stops"]

SAMPLES = 4
"""How many trials' sample images the page shows side by side: the best and the next ones."""


def result_rows(state: SweepState) -> list[dict[str, Any]]:
    """One row per trial (rescues included): outcome, metric, epochs, runs, and every parameter."""
    rows = []
    for r in sorted(state.trials.values(), key=lambda r: (r.number, r.rescue_of is not None)):
        row: dict[str, Any] = {
            "trial": r.label,
            "number": r.number,
            "status": r.status,
            state.metric: r.value,
            "epochs": r.epochs,
            "reason": r.reason,
            "signal": r.signal,
            "diverged_at_step": r.diverged_at,
            "would_stop": r.would_stop,
            "drawn_by": r.drawn_by,
            "steps": r.steps,
            "skipped_share": r.skipped_share,
            "rescue_of": r.rescue_of.label if r.rescue_of is not None else "",
            "best": state.best is r,
            "mlflow_run_id": r.run_id,
            "ray_trial_id": r.ray_id,
        }
        row.update({f"param.{k}": _cell(v) for k, v in r.params.items()})
        rows.append(row)
    return rows


def _cell(value: Any) -> Any:
    return value if isinstance(value, (int, float, bool)) and not isinstance(value, bool) else str(value)


def write_results(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """``results.parquet`` and ``results.csv`` in ``folder``."""
    if not rows:
        return []
    columns = list(dict.fromkeys(key for row in rows for key in row))
    data = {}
    for column in columns:
        values = [row.get(column) for row in rows]
        numeric = all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values)
        data[column] = values if numeric or all(isinstance(v, bool) for v in values) else [_text(v) for v in values]
    table = pa.table(data)
    pq.write_table(table, folder / "results.parquet")
    pyarrow.csv.write_csv(table, folder / "results.csv")
    return [folder / "results.parquet", folder / "results.csv"]


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def read_results(folder: Path) -> list[dict[str, Any]]:
    """Rows from ``results.parquet`` (empty when the sweep wrote none)."""
    path = folder / "results.parquet"
    return pq.read_table(path).to_pylist() if path.exists() else []


def importances(study: optuna.Study) -> dict[str, float]:
    """FANOVA's parameter importances, each a share of the metric's variance, over the sweep's completed trials.

    Only the trials the sweep recorded ``completed``: a diverged trial is a COMPLETE Optuna trial
    (its last value before the stop, and a constraint), and Optuna's own call counted it (a user's
    parameter that decided every divergence scored 0.016 from the one trial that completed). fANOVA
    (seeded): Optuna 5's default, PED-ANOVA, is no share of variance and with few trials judges the
    best one or two. Parameters only some completed trials have (conditional ones) are left out,
    as fANOVA leaves them. Over :data:`IMPORTANCE_TRIALS` completed trials, a seeded random sample
    of that many. {} with fewer than two completed trials or when it cannot be computed.
    """
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.trial import TrialState

    completed = [  # the sweep's own: a warm start's told trials lack its new parameters (they were left out)
        trial
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if trial.user_attrs.get("status", COMPLETED) == COMPLETED and not is_told(trial)
    ]
    if len(completed) < 2:
        return {}
    if len(completed) > IMPORTANCE_TRIALS:  # fANOVA's forest: 2 s for 200 trials here, 26 s for 1,000
        completed = random.Random(0).sample(completed, IMPORTANCE_TRIALS)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" in the report
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            only = optuna.create_study(directions=study.directions)
            only.add_trials(completed)
            found = optuna.importance.get_param_importances(only, evaluator=FanovaImportanceEvaluator(seed=0))
            return {k: float(v) for k, v in found.items()}
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}
    finally:
        optuna.logging.set_verbosity(verbosity)


def prewarm() -> threading.Thread:
    """Import the report's heavy modules (fANOVA importances, matplotlib, Optuna's plots) in a thread.

    Started once a sweep's end is near (``sweeps.engine.callbacks.ReportPrewarm``), while its last
    trials run; about 3 s of imports that the report at the end would otherwise add to every sweep.
    """

    def load() -> None:
        import importlib

        import matplotlib

        matplotlib.use("Agg")  # as the report sets it; no display is needed or wanted
        modules = ("optuna.importance", "matplotlib.pyplot", "optuna.visualization.matplotlib", "optuna.visualization")
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError:  # the report says what it could not draw
                pass

    thread = threading.Thread(target=load, name="report-prewarm", daemon=True)
    thread.start()
    return thread


def learning_curves(study: optuna.Study, rows: list[dict[str, Any]], metric: str, mode: str, uri: str) -> list[Curve]:
    """Each trial's ``(epoch, metric)`` points: the study's intermediate values; a rescue's from MLflow."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    completed = [r for r in ordered(rows, metric, mode) if r["status"] == COMPLETED and r.get(metric) is not None]
    ranks = {row["trial"]: rank for rank, row in enumerate(completed, start=1)}
    curves = []
    for row in rows:
        if row.get("rescue_of"):
            points = metric_history(uri, str(row.get("mlflow_run_id")), metric) if uri else []
        else:
            trial = trials.get(int(row["number"]))
            points = sorted(trial.intermediate_values.items()) if trial is not None else []
        stop = int(row.get("epochs") or 0) if row["status"] == DIVERGED else 0
        label = str(row["trial"])
        rank, would_stop = ranks.get(label, 0), would_stop_epoch(row)
        curves.append(Curve(label, str(row["status"]), points, stop, bool(row.get("best")), rank, would_stop))
    return curves


def would_stop_epoch(row: dict[str, Any]) -> int:
    """The epoch a would-be stop (``signal@step``) fell in (:func:`step_epoch`); 0 for none or unknown."""
    observed = _observed(row, {})
    return _epoch_of(row, observed["step"] if observed is not None else None)


def _epoch_of(row: dict[str, Any], step: int | None) -> int:
    """The epoch of the trial's ``step``, from its steps per epoch; 0 when unknown."""
    return step_epoch(step, int(row.get("steps") or 0), int(row.get("epochs") or 0))


def stop_decisions(rows: list[dict[str, Any]], tags: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """Each stop: divergence stops, would-be stops (``divergence.mode: observe``), then ASHA's cuts.

    With the audit's verdict on the stopped trial's run when the sweep was audited.
    """
    rescued = {row["rescue_of"]: f"{row['trial']} {row['status']}" for row in rows if row.get("rescue_of")}
    found: list[tuple[int, dict[str, Any]]] = []
    for row in rows:
        run_tags = tags.get(str(row.get("mlflow_run_id")), {})
        base = {
            "trial": row["trial"],
            "number": row["number"],
            "status": row["status"],
            "epoch": row.get("epochs"),
            "mlflow_run_id": row.get("mlflow_run_id"),
            "verdict": run_tags.get(TAG_AUDIT_VERDICT, ""),
            "audit_metric": _number(run_tags.get(TAG_AUDIT_METRIC)),
            "audit_run_id": run_tags.get(TAG_AUDIT_RUN, ""),
            "rescue": rescued.get(row["trial"], ""),
        }
        if row["status"] == DIVERGED:
            stop = {
                "decision": "stopped: diverged",
                "signal": row.get("signal") or "",
                "step": row.get("diverged_at_step"),
            }
            found.append((0, {**base, **stop, "reason": row.get("reason") or ""}))
        observed = _observed(row, run_tags)
        if observed is not None:
            epoch = _epoch_of(row, observed["step"]) or None  # the stop's epoch, not the trial's last
            found.append((1, {**base, "decision": "would stop (observe)", **observed, "epoch": epoch}))
        if row["status"] == PRUNED:
            stop = {"decision": "stopped: pruned", "signal": "ASHA", "step": None, "reason": row.get("reason") or ""}
            found.append((2, {**base, **stop}))
    return [stop for _, stop in sorted(found, key=lambda item: (item[0], item[1]["number"], item[1]["trial"]))]


def _observed(row: dict[str, Any], tags: dict[str, str]) -> dict[str, Any] | None:
    """A would-be stop of ``divergence.mode: observe``: from the run's tags, else the row's ``signal@step``."""
    if tags.get(TAG_WOULD_STOP_SIGNAL):
        step = _number(tags.get(TAG_WOULD_STOP_STEP))
        return {
            "signal": tags[TAG_WOULD_STOP_SIGNAL],
            "step": int(step) if step is not None else None,
            "reason": tags.get(TAG_WOULD_STOP_REASON, ""),
        }
    text = str(row.get("would_stop") or "")
    if not text:
        return None
    signal, _, step_text = text.partition("@")
    step = _number(step_text)
    return {"signal": signal, "step": int(step) if step is not None else None, "reason": ""}


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def write_stops(folder: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    """``stops.json``: the stop decisions, with the would-be stops and audit verdicts MLflow holds now.

    ``sweeps report`` calls it again, so an audit made after the sweep shows up on the page; when
    MLflow cannot be read then, the stops written before are kept.
    """
    where = (str(meta.get(key) or "") for key in ("tracking_uri", "experiment_id", "parent_run_id"))
    tags = tagged_runs(*where)
    path = folder / "stops.json"
    if tags is None and path.exists():
        return path
    path.write_text(json.dumps(stop_decisions(rows, tags or {}), indent=1))
    return path


def write_page(
    name: str, meta: dict[str, Any], folder: Path, rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], Path]:
    """Rewrite a finished report's ``stops.json`` (with the audit verdicts MLflow holds now) and ``report.html``.

    ``sweeps report`` and ``sweeps audit`` call it; returns the stop decisions and the page.
    """
    stops = json.loads(write_stops(folder, meta, rows).read_text())
    notes_file = folder / "divergence.txt"
    notes = notes_file.read_text() if notes_file.exists() else ""
    page = folder / "report.html"
    page.write_text(html_page(name, meta, rows, notes, folder))
    return stops, page


REASON_WIDTH = 96
"""The terminal table's reason column: a detector's whole reason (``runaway_weights: d: last-layer weight
norm 80.6 > 50 x 0.583 on 15 of the last 19 steps``) fits; a failure's long message is cut."""


def terminal_table(rows: list[dict[str, Any]], metric: str, names: list[str] | None = None) -> str:
    """The results as a plain-text table; parameter columns ``names`` (default: every parameter)."""
    every = [k[6:] for k in dict.fromkeys(k for row in rows for k in row if k.startswith("param."))]
    params = [f"param.{name}" for name in (every if names is None else names)]
    header = ["trial", "status", metric, "epochs", *[p[6:] for p in params], "reason"]
    lines = [header]
    for row in rows:
        value = row.get(metric)
        shown = metric_text(value) if isinstance(value, float) and math.isfinite(value) else "-"
        cells = [("*" if row.get("best") else " ") + str(row["trial"]), str(row["status"]), shown, epochs_text(row)]
        cells += [short(row.get(p)) for p in params] + [clipped(row_reason(row), REASON_WIDTH)]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    legend = (
        ["epochs N+: stopped during epoch N+1, as diverged"] if any(line[3].endswith("+") for line in lines) else []
    )
    return "\n".join([text[0], "-" * len(text[0]), *text[1:], *legend])


def clipped(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut at a word with ``...`` (the whole is in results.csv and MLflow)."""
    if len(text) <= width:
        return text
    cut = text[: width - 3].rsplit(" ", 1)[0].rstrip(" ,;:(")
    return (cut or text[: width - 3]) + "..."


def write_report(
    title: str, meta: dict[str, Any], rows: list[dict[str, Any]], notes: str, study: optuna.Study, folder: Path
) -> list[Path]:
    """Write the report into ``folder``; return its files.

    Results (Parquet, CSV), divergence notes, importances, stop decisions, the best trials' sample
    images, the plots (learning curves, importances, contour, Optuna's history; ``plots.html``)
    and ``report.html``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    metric, mode, uri = str(meta.get("metric", "")), str(meta.get("mode", "min")), str(meta.get("tracking_uri") or "")
    written = write_results(rows, folder)
    (folder / "divergence.txt").write_text(notes + "\n" if notes else "")
    imp = importances(study)
    (folder / "importances.json").write_text(json.dumps(imp, indent=2))
    written += [folder / "divergence.txt", folder / "importances.json", write_stops(folder, meta, rows)]
    written += write_samples(folder, meta, rows)
    rungs = [int(r) for r in meta.get("rungs") or []]
    epochs = int(meta.get("epochs") or max((int(r.get("epochs") or 0) for r in rows), default=1))
    curves = learning_curves(study, rows, metric, mode, uri)
    top = [name for name, value in imp.items() if value > 0][:2]
    with quiet():
        drawn = [
            draw_learning_curves(curves, metric, mode, epochs, rungs, folder / "learning_curves.png"),
            draw_importances(imp, folder / "importances.png"),
            draw_contour(study, top, metric, folder / "contour.png"),
        ]
    written += [path for path in drawn if path is not None]
    written += optuna_pngs(study, folder)
    written += optuna_html(study, folder, top)
    (folder / "report.html").write_text(html_page(title, meta, rows, notes, folder))
    written.append(folder / "report.html")
    return written


def write_samples(folder: Path, meta: dict[str, Any], rows: list[dict[str, Any]], count: int = SAMPLES) -> list[Path]:
    """The best ``count`` completed trials' images of their last epoch, in ``samples/``, and ``samples.json``.

    Trials log ``images/epoch_NNN.png`` when their trainer has ``sample_grid()``; without it there
    are none and the page says so.
    """
    metric, mode = str(meta.get("metric", "")), str(meta.get("mode", "min"))
    best = [r for r in ordered(rows, metric, mode) if r["status"] == COMPLETED and r.get("epochs")][:count]
    uri = str(meta.get("tracking_uri") or "")
    wanted = [(r["trial"], str(r["mlflow_run_id"]), f"images/epoch_{int(r['epochs']):03d}.png") for r in best]
    shutil.rmtree(folder / "samples", ignore_errors=True)  # a resumed sweep's best may have changed
    found = download_images(uri, wanted, folder / "samples") if uri and wanted else {}
    names = searched(meta, rows)
    listed = [
        {
            "trial": r["trial"],
            "file": f"samples/{r['trial']}.png",
            "rank": rank,
            "value": r.get(metric),
            "epoch": r["epochs"],
            "params": {name: r.get(f"param.{name}") for name in names if r.get(f"param.{name}") is not None},
        }
        for rank, r in enumerate(best, start=1)
        if r["trial"] in found
    ]
    path = folder / "samples.json"
    path.write_text(json.dumps(listed, indent=1))
    return [path, *found.values()]

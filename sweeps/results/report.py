"""A sweep's report: results table, Optuna importances and plots, one self-contained HTML page.

The table is written as Parquet (pyarrow) and CSV.
Written into the sweep's folder at the end of a run (and logged to the parent MLflow run);
``sweeps report SWEEP`` prints the table and rewrites the page from the folder.
"""

from __future__ import annotations

import base64
import html
import json
import math
import threading
import warnings
from pathlib import Path
from typing import Any

import optuna
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq

from sweeps.core.records import SweepState
from sweeps.tracking.mlflow_client import param_text

PLOTS = ("optimization_history", "parallel_coordinate", "slice")


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
    """Optuna's parameter importances over completed feasible trials ({} when too few)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


def prewarm() -> threading.Thread:
    """Import the report's heavy modules (fANOVA importances, matplotlib, Optuna's plots) in a thread.

    Started when a sweep starts, while the driver mostly waits on Ray; about 3 s of imports that
    the report at the end would otherwise add to every sweep.
    """

    def load() -> None:
        import importlib

        import matplotlib

        matplotlib.use("Agg")  # as the report sets it; no display is needed or wanted
        for module in ("optuna.importance", "matplotlib.pyplot", "optuna.visualization.matplotlib", "plotly"):
            try:
                importlib.import_module(module)
            except ImportError:  # the report says what it could not draw
                pass

    thread = threading.Thread(target=load, name="report-prewarm", daemon=True)
    thread.start()
    return thread


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optimization history, parallel coordinates and slice plots as PNG, and all three in one HTML."""
    written: list[Path] = []
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return written
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # not a line per diverged (inf) trial left out
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            written += _png_plots(study, folder)
            written += _html_plots(study, folder)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return written


def _png_plots(study: optuna.Study, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as mpl_vis

    written = []
    for name in PLOTS:
        try:
            result = getattr(mpl_vis, f"plot_{name}")(study)
        except (ValueError, RuntimeError, ImportError):
            continue
        panels = len(result.flat) if hasattr(result, "flat") else 1  # slice: one panel per parameter
        figure = result.flat[0].figure if hasattr(result, "flat") else result.figure
        figure.set_size_inches(max(7.0, 3.2 * panels), 4.5)
        figure.tight_layout()
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    return written


def _html_plots(study: optuna.Study, folder: Path) -> list[Path]:
    try:
        from optuna import visualization as vis
    except ImportError:
        return []
    parts: list[str] = []
    for name in PLOTS:
        try:
            figure = getattr(vis, f"plot_{name}")(study)
        except (ValueError, RuntimeError, ImportError):
            continue
        parts.append(figure.to_html(full_html=False, include_plotlyjs=not parts))  # plotly.js once, inline
    if not parts:
        return []
    path = folder / "plots.html"
    path.write_text("<!doctype html><meta charset='utf-8'><title>Optuna plots</title>" + "".join(parts))
    return [path]


def terminal_table(rows: list[dict[str, Any]], metric: str, names: list[str] | None = None) -> str:
    """The results as a plain-text table; parameter columns ``names`` (default: every parameter)."""
    every = [k[6:] for k in dict.fromkeys(k for row in rows for k in row if k.startswith("param."))]
    params = [f"param.{name}" for name in (every if names is None else names)]
    header = ["trial", "status", metric, "epochs", *[p[6:] for p in params], "reason"]
    lines = [header]
    for row in rows:
        value = row.get(metric)
        shown = f"{value:.5g}" if isinstance(value, float) and math.isfinite(value) else "-"
        cells = [("*" if row.get("best") else " ") + str(row["trial"]), str(row["status"]), shown, str(row["epochs"])]
        cells += [_short(row.get(p)) for p in params] + [str(row.get("reason") or "")[:60]]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join([text[0], "-" * len(text[0]), *text[1:]])


def _short(value: Any) -> str:
    return "-" if value is None else param_text(value)


def html_page(title: str, meta: dict[str, Any], rows: list[dict[str, Any]], notes: str, folder: Path) -> str:
    """A self-contained HTML report: summary, divergence notes, importances, plots (PNG inline), table."""
    metric = str(meta.get("metric", ""))
    importance_file = folder / "importances.json"
    imp = json.loads(importance_file.read_text()) if importance_file.exists() else {}
    images = "".join(_figure(folder / f"{n}.png") for n in PLOTS if (folder / f"{n}.png").exists())
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    facts = {
        "trainer": meta.get("trainer"),
        "metric": f"{metric} ({meta.get('mode')})",
        "trials": ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
        "MLflow": f"{meta.get('tracking_uri')} (parent run {meta.get('parent_run_id')})",
        "Optuna": meta.get("optuna_storage"),
    }
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font:14px system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}} th{{background:#f3f3f3}}
tr.best{{background:#e8f6e8}} tr.diverged{{background:#fdecea}} tr.pruned{{color:#777}}
figure{{display:inline-block;margin:0 1em 1em 0}} img{{max-width:100%}} pre{{background:#f6f6f6;padding:.6em}}
</style></head><body>
<h1>Sweep {html.escape(title)}</h1>
{_dl(facts)}
{f"<h2>Divergence</h2><pre>{html.escape(notes)}</pre>" if notes else ""}
{_importance_table(imp)}
{f"<h2>Plots</h2>{images}" if images else ""}
<h2>Trials</h2>
{_rows_table(rows, metric)}
</body></html>
"""


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    caption = path.stem.replace("_", " ")
    return (
        f"<figure><img alt='{caption}' src='data:image/png;base64,{data}'><figcaption>{caption}</figcaption></figure>"
    )


def _dl(facts: dict[str, Any]) -> str:
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in facts.items())
    return f"<dl>{items}</dl>"


def _importance_table(imp: dict[str, float]) -> str:
    if not imp:
        return ""
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in imp.items())
    return f"<h2>Parameter importances</h2><table><tr><th>parameter</th><th>importance</th></tr>{body}</table>"


def _rows_table(rows: list[dict[str, Any]], metric: str) -> str:
    if not rows:
        return "<p>No trials.</p>"
    params = list(dict.fromkeys(k for row in rows for k in row if k.startswith("param.")))
    head = ["trial", "status", metric, "epochs", *[p[6:] for p in params], "reason", "MLflow run"]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        value = row.get(metric)
        shown = f"{value:.5g}" if isinstance(value, float) and math.isfinite(value) else "-"
        cells = [row["trial"], row["status"], shown, row["epochs"], *[_short(row.get(p)) for p in params]]
        cells += [row.get("reason") or "", row.get("mlflow_run_id", "")]
        css = "best" if row.get("best") else str(row["status"])
        out.append(f"<tr class='{css}'>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "".join(out) + "</table>"


def write_report(
    title: str, meta: dict[str, Any], rows: list[dict[str, Any]], notes: str, study: optuna.Study, folder: Path
) -> list[Path]:
    """Write results, importances, plots and ``report.html`` into ``folder``; return the files."""
    folder.mkdir(parents=True, exist_ok=True)
    written = write_results(rows, folder)
    (folder / "divergence.txt").write_text(notes)
    written.append(folder / "divergence.txt")
    (folder / "importances.json").write_text(json.dumps(importances(study), indent=2))
    written.append(folder / "importances.json")
    written += write_plots(study, folder)
    (folder / "report.html").write_text(html_page(title, meta, rows, notes, folder))
    written.append(folder / "report.html")
    return written

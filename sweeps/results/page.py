"""``report.html``: one self-contained page a person reads the morning after a sweep.

In reading order: what the sweep found (best trial, counts), the learning curves of every trial,
the best trials' sample images side by side, the stop decisions (with the audit's verdict when
the sweep was audited), what mattered (importances, contour of the two most important
parameters), the trials (sorted by the metric, sortable by any column), and more plots. Built
only from the report folder's files, so ``sweeps report`` rebuilds it without the study.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from sweeps.core.keys import AUDIT_FALSE_STOP, AUDIT_TRUE_STOP, AUDIT_UNJUDGED, COMPLETED, DIVERGED, PRUNED
from sweeps.core.records import observed_text
from sweeps.divergence import may_recover
from sweeps.tracking.mlflow_client import short_text

GROUPS = {COMPLETED: 0, PRUNED: 1, DIVERGED: 2}
REASON_CHARS = 48
"""A reason longer than this is cut in the tables (the whole of it shows on hover)."""


def ordered(rows: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Trials as a person reads them: completed by the metric (best first), then pruned, diverged, the rest.

    Pruned trials come by how far they got, then by their metric at that epoch.
    """
    sign = 1.0 if mode == "min" else -1.0

    def key(row: dict[str, Any]) -> tuple[int, float, float, int]:
        value = finite(row.get(metric))
        group = GROUPS.get(str(row.get("status")), len(GROUPS))
        epochs = -float(row.get("epochs") or 0) if group == GROUPS[PRUNED] else 0.0
        return group, epochs, sign * value if value is not None else math.inf, int(row.get("number") or 0)

    return sorted(rows, key=key)


def searched(meta: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The swept parameters: the spec's (kept in the sweep's meta), else those whose value varies."""
    every = list(dict.fromkeys(k[6:] for row in rows for k in row if k.startswith("param.")))
    named = meta.get("searched")
    if isinstance(named, list) and named:
        return [name for name in named if name in every] or every
    return [n for n in every if len({str(row.get(f"param.{n}")) for row in rows}) > 1]


def epochs_text(row: dict[str, Any]) -> str:
    """A row's epochs as the tables show them: a diverged trial's as those it validated, then ``+``.

    A diverged trial's ``epochs`` is the epoch it was stopped in: ``1+`` reads "epoch 1 and part
    of the next", where ``2`` would look like a trial that ran two epochs to their end.
    """
    epochs = row.get("epochs")
    if row.get("status") == DIVERGED and isinstance(epochs, int) and epochs > 0:
        return f"{epochs - 1}+"
    return "" if epochs is None else str(epochs)


def row_reason(row: dict[str, Any]) -> str:
    """A row's reason as the tables show it: with ``divergence.mode: observe``, a would-be stop where none is given."""
    reason = str(row.get("reason") or "")
    flag = str(row.get("would_stop") or "")
    if flag and flag not in reason:
        return f"{reason}; {observed_text(flag)}" if reason else observed_text(flag)
    return reason


def short(value: Any) -> str:
    """A parameter value as a run name shows it; '-' when the trial has none (a conditional parameter)."""
    return "-" if value is None else short_text(value)


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def metric_text(value: Any) -> str:
    """A metric value to 4 significant digits; '-' when there is none."""
    number = finite(value)
    return "-" if number is None else f"{number:.4g}"


def html_page(title: str, meta: dict[str, Any], rows: list[dict[str, Any]], notes: str, folder: Path) -> str:
    """The page (see the module docstring), with its images inline."""
    metric, mode = str(meta.get("metric", "")), str(meta.get("mode", "min"))
    params = searched(meta, rows)
    sections = [
        _section(
            "curves",
            "Learning curves",
            _image(folder / "learning_curves.png", f"{metric} per epoch", curves_caption(mode)),
        ),
        _section("samples", "Samples at the last epoch", _samples(folder, metric)),
        _section("stops", "Stop decisions", _stops(folder, notes, rows, metric, mode)),
        _section("mattered", "What mattered", _mattered(folder, rows, params)),
        _section("trials", "Trials", _trials(ordered(rows, metric, mode), metric, params)),
        _section("more", "More", _more(folder, meta)),
    ]
    nav = " · ".join(f"<a href='#{key}'>{html.escape(name)}</a>" for key, name in NAV)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Sweep {html.escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>Sweep {html.escape(title)}</h1>
{_headline(meta, rows, metric, mode, params)}
<nav>{nav}</nav>
{"".join(sections)}
<script>{SORT_JS}</script>
</body></html>
"""


def curves_caption(mode: str) -> str:
    """The learning curves' caption; a far-off value sits on the worse edge, the top when lower is better."""
    edge = "top" if mode == "min" else "bottom"
    return (
        "Each line is a trial's metric after each epoch (the Optuna study's intermediate values). A pruned trial ends "
        "in a circle where ASHA cut it, at a rung; a diverged one in a cross at the epoch it was stopped in, on the "
        f"{edge} edge when its metric was off the scale or it had none."
    )


NAV = (
    ("curves", "Curves"),
    ("samples", "Samples"),
    ("stops", "Stops"),
    ("mattered", "What mattered"),
    ("trials", "Trials"),
    ("more", "More"),
)

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em 2em;color:#222;max-width:1500px}
h1{margin:0 0 .2em;font-size:1.6em} h2{margin:1.4em 0 .5em;font-size:1.2em;border-bottom:1px solid #ddd}
nav{margin:.6em 0 0;font-size:13px} nav a{color:#1f5fa8;text-decoration:none}
.lead{font-size:15px;margin:.3em 0} .muted{color:#666;font-size:12px}
.pill{display:inline-block;border-radius:9px;padding:0 .55em;margin-right:.3em;font-size:12px;color:#fff}
.completed{background:#1f77b4} .pruned{background:#8a8a8a} .diverged{background:#d62728}
.failed,.oom{background:#ff7f0e} .interrupted{background:#9467bd} .running{background:#555}
table{border-collapse:collapse;font-size:12.5px} td,th{border-bottom:1px solid #e3e3e3;padding:3px 9px;text-align:left;
white-space:nowrap} th{background:#f4f4f4;position:sticky;top:0} th.sortable{cursor:pointer}
th.sortable:after{content:" \\2195";color:#aaa} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{background:#e9f6e9;font-weight:600} tr.row-pruned td{color:#777}
tr.row-diverged td:first-child{color:#d62728}
td.reason{max-width:28em;overflow:hidden;text-overflow:ellipsis}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top} figcaption{font-size:12px;color:#444;max-width:60em}
figure.sample img{image-rendering:pixelated;width:288px;border:1px solid #ccc}
figure.sample.best img{border:3px solid #2ca02c}
img{max-width:100%} pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap}
.verdict-false_stop{color:#b00;font-weight:600} .verdict-true_stop{color:#2a7a2a}
"""

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, column){
    th.classList.add('sortable');
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var up = th.dataset.dir !== 'up'; th.dataset.dir = up ? 'up' : 'down';
      function key(row){ var cell = row.cells[column]; var v = cell.dataset.v !== undefined ? cell.dataset.v
        : cell.textContent; var n = parseFloat(v); return isNaN(n) ? v : n; }
      rows.sort(function(a, b){ var x = key(a), y = key(b);
        if (typeof x !== typeof y) return typeof x === 'number' ? -1 : 1;
        return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1); });
      rows.forEach(function(row){ body.appendChild(row); });
    });
  });
});
"""


def _section(key: str, name: str, body: str) -> str:
    return f"<section id='{key}'><h2>{html.escape(name)}</h2>{body}</section>\n"


def _headline(meta: dict[str, Any], rows: list[dict[str, Any]], metric: str, mode: str, params: list[str]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row["status"])] = counts.get(str(row["status"]), 0) + 1
    pills = "".join(f"<span class='pill {html.escape(k)}'>{html.escape(k)} {v}</span>" for k, v in counts.items())
    goal = "minimizing" if mode == "min" else "maximizing"
    lead = (
        f"{len(rows)} trials of <b>{html.escape(str(meta.get('trainer', '')))}</b>, "
        f"{html.escape(str(meta.get('epochs', '?')))} epochs each, {goal} <b>{html.escape(metric)}</b>."
    )
    best = next((r for r in rows if r.get("best")), None)
    if best is not None:
        values = ", ".join(f"{p}={short(best[f'param.{p}'])}" for p in params if best.get(f"param.{p}") is not None)
        lead += f" Best: <b>{html.escape(str(best['trial']))}</b> {html.escape(metric)} = "
        lead += f"<b>{metric_text(best.get(metric))}</b> ({html.escape(values)})."
    else:
        lead += " No trial completed."
    if meta.get("time_ran_out"):  # a time limit, not a short budget, ended it
        lead += f" {html.escape(str(meta['time_ran_out']).capitalize())}."
    if meta.get("stopped"):  # Ctrl-C: resume refuses such a sweep; a warm start goes on from it
        name = str(meta.get("name") or "")
        lead += f" Stopped {html.escape(str(meta['stopped']))}; to go on from it: <code>sweeps run SPEC --warm-start "
        lead += f"{html.escape(name)}</code>."
    where = f"MLflow {meta.get('tracking_uri')}, parent run {meta.get('parent_run_id')}"
    return f"<p class='lead'>{lead}</p><p>{pills}</p><p class='muted'>{html.escape(where)}</p>"


def _image(path: Path, alt: str, caption: str = "") -> str:
    if not path.exists():
        return "<p class='muted'>Not drawn (no trial reported a metric).</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>{cap}</figure>"


def _samples(folder: Path, metric: str) -> str:
    listing = folder / "samples.json"
    samples = json.loads(listing.read_text()) if listing.exists() else []
    if not samples:
        return (
            "<p class='muted'>No sample images: none of the completed trials logged "
            "<code>images/epoch_NNN.png</code>. A trainer class logs one with <code>sample_grid()</code>, "
            "a function trainer with <code>run.image(grid)</code> each epoch.</p>"
        )
    figures = []
    for sample in samples:
        path = folder / sample["file"]
        if not path.exists():
            continue
        data = base64.b64encode(path.read_bytes()).decode()
        best = sample["rank"] == 1
        values = ", ".join(f"{k}={short(v)}" for k, v in sample.get("params", {}).items())
        place = " (best)" if best else f" (#{sample['rank']})"
        caption = (
            f"<b>{html.escape(sample['trial'])}</b>{place} · "
            f"{html.escape(metric)} {metric_text(sample.get('value'))} · epoch {sample['epoch']}"
            f"<br><span class='muted'>{html.escape(values)}</span>"
        )
        figures.append(
            f"<figure class='sample{' best' if best else ''}'><img alt='samples of {html.escape(sample['trial'])}' "
            f"src='data:image/png;base64,{data}'><figcaption>{caption}</figcaption></figure>"
        )
    return "<div class='samples'>" + "".join(figures) + "</div>"


def _stops(folder: Path, notes: str, rows: list[dict[str, Any]], metric: str, mode: str) -> str:
    listing = folder / "stops.json"
    stops = json.loads(listing.read_text()) if listing.exists() else []
    audit = folder / "audit.txt"  # written by ``sweeps audit``
    notes = "\n\n".join(text for text in (notes, audit.read_text().strip() if audit.exists() else "") if text)
    summary = f"<pre>{html.escape(notes)}</pre>" if notes else ""
    if not stops:
        early = Counter(str(r["status"]) for r in rows if r["status"] not in (COMPLETED, PRUNED, DIVERGED))
        ended = ", ".join(f"{status} {n}" for status, n in sorted(early.items()))
        rest = f"; {sum(early.values())} ended before their last epoch ({ended})." if early else ""
        return summary + f"<p class='muted'>No trial was stopped by the divergence detector or ASHA{rest or '.'}</p>"
    audited = any(s.get("verdict") for s in stops)
    rescues = any(s.get("rescue") for s in stops)
    best = next((r.get(metric) for r in rows if r.get("best")), None)
    head = [
        "trial",
        "decision",
        "signal",
        "at",
        "reason",
        *(["audit"] if audited else []),
        *(["rescue"] if rescues else []),
    ]
    body = []
    for stop in stops:
        at = f"step {stop['step']}" if stop.get("step") is not None else ""
        if stop.get("epoch"):
            at += (" in " if at else "after ") + f"epoch {stop['epoch']}"
        reason = str(stop.get("reason") or "")
        cells = [
            _td(stop["trial"]),
            _td(stop["decision"]),
            _td(stop.get("signal") or ""),
            _td(at),
            _td(_cut(reason), title=reason, css="reason"),
        ]
        if audited:
            cells.append(_audit_cell(stop, best, mode))
        if rescues:
            cells.append(_td(stop.get("rescue") or ""))
        css = "row-diverged" if stop["status"] == DIVERGED else "row-pruned" if stop["status"] == PRUNED else ""
        body.append(f"<tr class='{css}'>{''.join(cells)}</tr>")
    if audited:
        note = ""
    elif any(may_recover(str(s.get("signal") or ""), str(s.get("reason") or "")) for s in stops):
        note = (
            "<p class='muted'>No audit recorded: <code>sweeps audit</code> re-runs the detector's heuristic stops "
            "to their end.</p>"
        )
    else:  # a user read the note as a promise that ASHA's cuts could be audited
        note = (
            "<p class='muted'>Nothing to audit: <code>sweeps audit</code> re-runs the detector's heuristic stops; "
            "ASHA's cuts, and stops no later step undoes (a loss or weights not finite, a loss scale at its floor), "
            "are not re-run.</p>"
        )
    return summary + _table(head, body, "stops") + note


def _audit_cell(stop: dict[str, Any], best: Any, mode: str) -> str:
    verdict = str(stop.get("verdict") or "")
    if not verdict:
        return _td("-")
    return f"<td class='verdict-{html.escape(verdict)}'>{html.escape(verdict_text(stop, best, mode))}</td>"


def verdict_text(stop: dict[str, Any], best: Any, mode: str) -> str:
    """An audited stop's verdict in words: ``false stop: re-run reached 0.35 (better than the sweep's best)``."""
    verdict = str(stop.get("verdict") or "")
    value = stop.get("audit_metric")
    words = {
        AUDIT_FALSE_STOP: "false stop",
        AUDIT_TRUE_STOP: "true stop",
        AUDIT_UNJUDGED: "not judged: no trial completed to compare with",
    }.get(verdict, verdict)
    ran = "ran on to" if "observe" in str(stop.get("decision") or "") else "re-run reached"  # observe: no re-run
    text = words + (f": {ran} {metric_text(value)}" if value is not None else "")
    if verdict == AUDIT_FALSE_STOP and isinstance(value, (int, float)) and isinstance(best, (int, float)):
        if (value < best) if mode == "min" else (value > best):
            text += " (better than the sweep's best)"
    return text


def _mattered(folder: Path, rows: list[dict[str, Any]], params: list[str]) -> str:
    listing = folder / "importances.json"
    imp = json.loads(listing.read_text()) if listing.exists() else {}
    if not imp:
        return "<p class='muted'>Too few completed trials for parameter importances.</p>"
    top = list(imp)[:2]
    parts = [f"<p class='muted'>{html.escape(importance_scope(rows, params))}</p>"]
    parts.append(_image(folder / "importances.png", "parameter importances", "fANOVA's parameter importances (Optuna)"))
    if (folder / "contour.png").exists():
        parts.append(_image(folder / "contour.png", "contour", f"contour of the metric over {top[0]} and {top[1]}"))
    return "".join(parts)


IMPORTANCE_TRIALS = 200
"""The importances are computed from at most this many completed trials (a seeded random sample of more)."""


def importance_scope(rows: list[dict[str, Any]], params: list[str] | None = None) -> str:
    """What the importances and the contour are computed from, and what that leaves out.

    A user read ``output_activation 0.00`` while the five trials with ``none`` were the sweep's five
    worst: ASHA had cut them all, and only completed trials have a final value to explain. Another
    read ``res_blocks 0.00`` for a parameter only the resnet trials had: such parameters are not
    measured (``sweeps.results.report.importances``), and the line names them.
    """
    trials = [row for row in rows if not row.get("rescue_of")]  # rescues are not in the study
    done = [row for row in trials if row.get("status") == COMPLETED]
    completed, left_out = len(done), len(trials) - len(done)
    text = (
        f"Each parameter's share of the metric's variance (fANOVA) over the {completed} completed "
        f"trial{'s' if completed != 1 else ''} of {len(trials)}"
    )
    if completed > IMPORTANCE_TRIALS:
        text += f" (a random {IMPORTANCE_TRIALS} of them)"
    if left_out:
        text += (
            f": the {left_out} pruned, stopped or failed ones have no final value and are left out, so a "
            "parameter whose bad values were all cut early can score near 0 here (the trials table shows them)"
        )
    partial = [name for name in params or [] if any(row.get(f"param.{name}") is None for row in done)]
    if partial and done:
        pronoun = "it" if len(partial) == 1 else "them"
        text += f". Not measured: {', '.join(partial)} (only some completed trials have {pronoun})"
    if completed < 20:
        text += ". Few trials: read these as a hint, not a measurement"
    return text + "."


def _trials(rows: list[dict[str, Any]], metric: str, params: list[str]) -> str:
    if not rows:
        return "<p>No trials.</p>"
    head = ["trial", "status", metric, "epochs", *params, "reason", "MLflow run"]
    body = []
    for row in rows:
        value = finite(row.get(metric))
        reason = row_reason(row)
        run_id = str(row.get("mlflow_run_id") or "")
        cells = [
            _td(("* " if row.get("best") else "") + str(row["trial"]), sort=str(row["trial"])),
            _td(str(row["status"])),
            _td(metric_text(value), sort=repr(value) if value is not None else "", css="num"),
            _td(epochs_text(row), css="num"),
            *[_td(short(row.get(f"param.{p}")), css="num" if _numeric(row.get(f"param.{p}")) else "") for p in params],
            _td(_cut(reason), title=reason, css="reason"),
            _td(run_id[:8], title=run_id),
        ]
        css = "best" if row.get("best") else f"row-{row['status']}"
        body.append(f"<tr class='{css}'>{''.join(cells)}</tr>")
    return (
        "<p class='muted'>Best first; click a column to sort by it. Reasons are cut short: hover for the whole.</p>"
        + _table(head, body, "trials")
    )


MORE_FILES = ("plots.html", "results.csv")
"""The report folder's files the page links to by name."""


def linked_from(page: str, folder: Path) -> str:
    """The page with its links to the report folder's files made absolute, for a copy kept elsewhere.

    ``sweeps report --html FILE``'s copy linked ``plots.html`` next to itself, where there is none.
    """
    for name in MORE_FILES:
        page = page.replace(f"href='{name}'", f"href='{html.escape((folder.resolve() / name).as_uri())}'")
    return page


def _more(folder: Path, meta: dict[str, Any]) -> str:
    parts = []
    if (folder / "optimization_history.png").exists():
        parts.append(_image(folder / "optimization_history.png", "optimization history", "Optuna's history"))
    links = [
        ("plots.html", "interactive plots (history, parallel coordinates, slice, contour)"),
        ("results.csv", "every trial as CSV"),
    ]
    items = "".join(
        f"<li><a href='{name}'>{html.escape(name)}</a>: {html.escape(text)}</li>"
        for name, text in links
        if (folder / name).exists()
    )
    facts = {"Optuna study": meta.get("optuna_storage"), "Ray trials": meta.get("ray_experiment")}
    items += "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in facts.items() if v)
    return "".join(parts) + f"<ul>{items}</ul>"


def _table(head: list[str], body: list[str], name: str) -> str:
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table class='sortable {name}'><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _td(text: str, title: str = "", css: str = "", sort: str | None = None) -> str:
    attrs = f" class='{css}'" if css else ""
    attrs += f" title='{html.escape(title)}'" if title and title != text else ""
    attrs += f" data-v='{html.escape(sort)}'" if sort is not None else ""
    return f"<td{attrs}>{html.escape(text)}</td>"


def _cut(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1].rstrip() + "…"


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

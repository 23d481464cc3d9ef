"""The report's plots, drawn with matplotlib and Optuna's visualization: PNG files, and plotly HTML.

- ``learning_curves.png``: every trial's metric against the epoch on one plot, coloured by how the
  trial ended, ASHA's rungs marked, a pruned trial's line ending in a circle where ASHA cut it (on
  the worse edge, labelled with its value, when far worse than the completed trials' values) and
  a diverged trial's in a cross at the epoch it was stopped in, and a would-be stop of
  ``divergence.mode: observe`` a thin red cross on its trial's line, at the epoch it fell in;
- ``importances.png`` (Optuna's parameter importances as bars) and ``contour.png`` (Optuna's
  contour of the two most important parameters);
- ``optimization_history.png``; and ``plots.html``: Optuna's history, parallel-coordinate, slice
  and contour plots, interactive (plotly).

Drawn with matplotlib's object API (``Figure``), never through pyplot's global state, except for
Optuna's own plots, which use pyplot and are closed after saving.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from sweeps.core.keys import COMPLETED, DIVERGED, FAILED, INTERRUPTED, OOM, PRUNED

PNG_PLOTS = ("optimization_history",)
"""Optuna's plots drawn as PNG for the page (the slice and parallel-coordinate ones are in ``plots.html``)."""
HTML_PLOTS = ("optimization_history", "parallel_coordinate", "slice", "contour")
DPI = 100

STYLE: dict[str, dict[str, Any]] = {
    COMPLETED: {"color": "#1f77b4", "label": "completed", "z": 3},
    PRUNED: {"color": "#a0a0a0", "label": "pruned by ASHA (o: cut)", "z": 1},
    DIVERGED: {"color": "#d62728", "label": "diverged (x: stopped)", "z": 4},
    FAILED: {"color": "#ff7f0e", "label": "failed", "z": 2},
    OOM: {"color": "#ff7f0e", "label": "out of memory", "z": 2},
    INTERRUPTED: {"color": "#9467bd", "label": "interrupted", "z": 2},
}
BEST_COLOR = "#2ca02c"
WOULD_STOP_COLOR = STYLE[DIVERGED]["color"]


@dataclass
class Curve:
    """One trial's line: its label, how it ended, and its ``(epoch, metric)`` points."""

    label: str
    status: str
    points: list[tuple[int, float]]
    stop_epoch: int = 0
    """The epoch a diverged trial was stopped in (it has no metric for that epoch)."""
    best: bool = False
    rank: int = 0
    """1 for the best completed trial, 2 for the next, ...; 0 for the others."""
    would_stop_epoch: int = 0
    """``divergence.mode: observe``: the epoch the detector would have stopped this trial in; 0 for none."""
    finite: list[tuple[int, float]] = field(init=False)

    def __post_init__(self) -> None:
        self.finite = sorted((int(e), float(v)) for e, v in self.points if math.isfinite(v))


@contextmanager
def quiet() -> Iterator[None]:
    """No Optuna line per left-out (infinite) trial, no experimental or layout warnings."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)  # a renderer to measure labels with (``figure.canvas.get_renderer()``)
    return figure


@contextmanager
def plain_style() -> Iterator[None]:
    """The default look of matplotlib (Optuna's plots switch pyplot to its ``ggplot`` style for good)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.style

    with matplotlib.style.context("default"):
        yield


def _spread(wanted: list[float], gap: float, low: float, high: float) -> list[float]:
    """Positions near ``wanted`` (ascending) at least ``gap`` apart, within ``[low, high]`` where room allows."""
    placed: list[float] = []
    for y in wanted:
        placed.append(max(y, placed[-1] + gap) if placed else max(y, low))
    overflow = placed[-1] - high if placed else 0.0
    if overflow > 0:  # pushed over the top: shift down, keeping the gaps
        placed = [y - overflow for y in placed]
        for i in range(len(placed) - 2, -1, -1):
            placed[i] = min(placed[i], placed[i + 1] - gap)
    return placed


def draw_learning_curves(
    curves: list[Curve], metric: str, mode: str, epochs: int, rungs: list[int], path: Path
) -> Path | None:
    """Every trial's metric per epoch on one plot (see the module docstring); None when there is nothing to draw."""
    if not any(c.finite for c in curves) and not any(c.status == DIVERGED for c in curves):
        return None
    with plain_style():
        figure = _figure(10.0, 4.8)
        _draw_curves(figure, curves, metric, mode, max(epochs, 1), rungs)
        figure.savefig(path)
    return path


def _draw_curves(figure: Any, curves: list[Curve], metric: str, mode: str, epochs: int, rungs: list[int]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    ax = figure.subplots()
    figure.subplots_adjust(left=0.08, right=0.74, top=0.88, bottom=0.12)
    top_edge = blended_transform_factory(ax.transData, ax.transAxes)
    worse_up = mode == "min"  # the side of the plot where worse values go: the top for a loss
    values = _plotted_values(curves, worse_up)
    log = bool(values) and min(values) > 0 and max(values) / min(values) > 30
    if log:
        ax.set_yscale("log")
    if values:  # a diverged trial's far-off values do not squash the others: they leave the plot on the worse side
        low, high = min(values), max(values)
        if log:
            pad = (high / low) ** 0.05
            ax.set_ylim(low / pad, high * pad)
        else:
            pad = (high - low) * 0.06 or abs(high) * 0.05 or 1.0
            ax.set_ylim(low - pad, high + pad)
    ax.set_xlim(0.8, epochs + 0.9)
    bottom, ceiling = ax.get_ylim()
    edge = 0.96 if worse_up else 0.04  # where a diverged trial with nothing to plot sits, in axes height
    counts: dict[str, int] = {}
    ends: list[tuple[float, float, str, str, bool]] = []  # right-edge labels: x, y, text, colour, bold
    crosses: list[tuple[float, float, str, str, bool]] = []  # diverged: x, y, text, colour, on the worse edge
    cut_off: list[tuple[float, float, str, str, bool]] = []  # pruned far off, on the worse edge: x, y, text, colour
    would: list[tuple[float, float, str]] = []  # would-be stops marked (observe mode): epoch, value, trial
    flagged = 0  # would-be stops, marked or off the plot
    for curve in sorted(curves, key=lambda c: (STYLE.get(c.status, STYLE[FAILED])["z"], -c.rank, c.best)):
        style = STYLE.get(curve.status, STYLE[FAILED])
        counts[curve.status] = counts.get(curve.status, 0) + 1
        color = BEST_COLOR if curve.best else style["color"]
        xs, ys = [e for e, _ in curve.finite], [v for _, v in curve.finite]
        highlight = curve.best or 0 < curve.rank <= 3
        width = 2.8 if curve.best else 1.7 if highlight else 1.0
        alpha = 1.0 if highlight or curve.status == DIVERGED else 0.6
        zorder = 10 if curve.best else style["z"] + (2 if highlight else 0)
        if xs:
            ax.plot(xs, ys, color=color, lw=width, alpha=alpha, marker="o", ms=2.5, zorder=zorder)
        if curve.status == PRUNED and xs and bottom <= ys[-1] <= ceiling:
            ax.plot(xs[-1:], ys[-1:], "o", ms=7, mfc="white", mec=color, mew=1.5, zorder=zorder)
        elif curve.status == PRUNED and xs:  # cut far off on the worse side: its circle sits on that edge
            ax.plot(xs[-1:], [edge], "o", ms=7, mfc="white", mec=color, mew=1.5, transform=top_edge, clip_on=False)
            cut_off.append((xs[-1], edge, f"{curve.label} ({ys[-1]:.4g})", color, True))
        if curve.status == DIVERGED:
            stop = curve.stop_epoch or (xs[-1] + 1 if xs else 1)
            if ys and bottom <= ys[-1] <= ceiling:
                ax.plot([xs[-1], stop], [ys[-1], ys[-1]], ls=":", color=color, lw=1.2, zorder=zorder)
                ax.plot([stop], [ys[-1]], "X", ms=10, color=color, mec="white", zorder=zorder + 1)
                crosses.append((stop, ys[-1], curve.label, color, False))
            else:  # no finite epoch, or off the plot: the cross sits on the worse edge (top for min, bottom for max)
                ax.plot([stop], [edge], "X", ms=10, color=color, mec="white", transform=top_edge, clip_on=False)
                crosses.append((stop, edge, curve.label, color, True))
        elif highlight and xs:
            ends.append((xs[-1], ys[-1], curve.label + (" best" if curve.best else ""), color, curve.best))
        if curve.would_stop_epoch and xs:
            flagged += 1
            would.extend(_mark_would_stop(ax, curve, bottom, ceiling, zorder))
    _label_ends(ax, ends)
    _label_would_stops(ax, would)
    stops = [
        (x, y, top_edge if on_edge else ax.transData, text, color) for x, y, text, color, on_edge in _merged(crosses)
    ]
    stops = stops[:12] + [(x, y, top_edge, text, color) for x, y, text, color, _ in _merged(cut_off)[:12]]
    _label_apart(ax, stops, -11.0 if worse_up else 11.0)  # away from the worse edge, where most of them sit
    for rung in rungs:
        ax.axvline(rung, ls="--", lw=1, color="#555555", alpha=0.6, zorder=0)
        ax.text(rung, 1.01, f"ASHA rung {rung}", transform=top_edge, fontsize=8, ha="center", color="#555555")
    ax.set_xticks(range(1, epochs + 1))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric + (" (log scale)" if log else ""))
    ax.grid(alpha=0.25)
    better = "lower" if mode == "min" else "higher"
    ax.set_title(f"{metric} per epoch, every trial ({better} is better)", fontsize=11, loc="left", pad=18)
    handles = []
    if any(c.best for c in curves):
        handles.append(Line2D([], [], color=BEST_COLOR, lw=2.8, label="best trial"))
    for status, style in STYLE.items():
        if counts.get(status):
            marker = {PRUNED: "o", DIVERGED: "X"}.get(status, "")
            face = "white" if status == PRUNED else style["color"]
            label = f"{style['label']}: {counts[status]}"
            handles.append(Line2D([], [], color=style["color"], marker=marker, mfc=face, label=label))
    if flagged:
        label = f"would stop (observe): {flagged}"
        handles.append(Line2D([], [], ls="", color=WOULD_STOP_COLOR, marker="x", ms=8, mew=2, label=label))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)


def _plotted_values(curves: list[Curve], worse_up: bool) -> list[float]:
    """The values the y-axis is fitted to: far-off ones on the worse side leave the plot, not squash the rest.

    The completed trials' values (else every trial's that did not diverge) set the range; another
    trial's value joins it unless it is worse by more than that range's span: a pruned trial's first
    epoch at 38.4 bits/dim squashed a user's completed curves, 5.6 to 8.1, into a fifth of the plot.
    """
    steady = [v for c in curves if c.status != DIVERGED for _, v in c.finite]
    if not steady:
        return [v for c in curves for _, v in c.finite]
    core = [v for c in curves if c.status == COMPLETED for _, v in c.finite] or steady
    span = max(core) - min(core) or abs(max(core)) or 1.0
    near = (lambda v: v <= max(core) + span) if worse_up else (lambda v: v >= min(core) - span)
    return core + [v for c in curves if c.status != COMPLETED for _, v in c.finite if near(v)]


def _mark_would_stop(
    ax: Any, curve: Curve, bottom: float, ceiling: float, zorder: float
) -> list[tuple[float, float, str]]:
    """A thin cross on the trial's line where the detector would have stopped it; the spot, to be named."""
    at = [(e, v) for e, v in curve.finite if e <= curve.would_stop_epoch] or curve.finite[:1]
    epoch, value = at[-1]
    if not bottom <= value <= ceiling:
        return []
    ax.plot([epoch], [value], "x", ms=9, mew=2, color=WOULD_STOP_COLOR, zorder=zorder + 1)
    return [(epoch, value, curve.label)]


def _label_would_stops(ax: Any, spots: list[tuple[float, float, str]]) -> None:
    """One label per epoch, above its highest cross, naming its trials (``t002, t004``): not one over another."""
    by_epoch: dict[float, list[tuple[float, str]]] = {}
    for epoch, value, label in spots:
        by_epoch.setdefault(epoch, []).append((value, label))
    for epoch, marks in by_epoch.items():
        top = max(value for value, _ in marks)
        names = ", ".join(label for _, label in sorted(marks, key=lambda m: m[1]))
        ax.annotate(names, (epoch, top), xytext=(5, 7), textcoords="offset points", **_small(WOULD_STOP_COLOR))


def _merged(crosses: list[tuple[float, float, str, str, bool]]) -> list[tuple[float, float, str, str, bool]]:
    """One label per spot: diverged trials stopped at the same place are named together (``t002, t003``).

    Those with no finite epoch all sit on the worse edge, in the epoch they were stopped in: their
    labels would be drawn over each other.
    """
    spots: dict[tuple[float, float, bool], list[tuple[float, float, str, str, bool]]] = {}
    for cross in crosses:
        x, y, _, _, on_edge = cross
        spots.setdefault((x, y, on_edge), []).append(cross)
    return [(*same[0][:2], ", ".join(c[2] for c in same), same[0][3], same[0][4]) for same in spots.values()]


def _small(color: str) -> dict[str, Any]:
    return {"fontsize": 8, "color": color, "va": "center"}


def _label_apart(ax: Any, labels: list[tuple[float, float, Any, str, str]], step: float) -> None:
    """Name each mark (x, y in its coordinates, text, colour) right of it, apart from every text already drawn.

    A label that would overlap one is moved ``step`` points at a time (up to 11 times): a user's two
    collapsed trials stopped at 0.05462 and 0.05464 in one epoch had their names drawn over each
    other, and so had two far-off cut trials' names and values.
    """
    renderer = ax.figure.canvas.get_renderer()
    taken = [_text_box(text, renderer) for text in ax.texts]
    for x, y, where, text, color in labels:
        for move in range(12):
            note = ax.annotate(
                text, (x, y), xycoords=where, xytext=(7, move * step), textcoords="offset points", **_small(color)
            )
            box = _text_box(note, renderer)
            if move == 11 or not any(box.overlaps(other) for other in taken):
                break
            note.remove()
        taken.append(box)


def _text_box(text: Any, renderer: Any) -> Any:
    """Where a text (an annotation's, without its line) is drawn, in pixels."""
    from matplotlib.text import Annotation, Text

    if isinstance(text, Annotation):
        text.update_positions(renderer)  # what drawing does first: its offset from the point, placed
    return Text.get_window_extent(text, renderer)


def _label_ends(ax: Any, ends: list[tuple[float, float, str, str, bool]]) -> None:
    """Name the highlighted trials right of their last point, moved apart so no two overlap."""
    if not ends:
        return
    ends = sorted(ends, key=lambda e: e[1])
    to_screen = ax.transData
    screen = [to_screen.transform((x, y))[1] for x, y, *_ in ends]
    box = ax.get_window_extent()
    placed = _spread(screen, 16.0, box.y0 + 8, box.y1 - 8)  # pixels: a label is 12-19 px tall
    points = 72.0 / ax.figure.dpi  # the spread is in pixels, the label's offset in points
    for (x, y, text, color, bold), ys in zip(ends, placed, strict=True):
        offset = (ys - to_screen.transform((x, y))[1]) * points
        line = {"arrowstyle": "-", "color": color, "lw": 0.6, "alpha": 0.7}
        weight = "bold" if bold else "normal"
        ax.annotate(
            text,
            (x, y),
            xytext=(8, offset),
            textcoords="offset points",
            fontweight=weight,
            arrowprops=line,
            **_small(color),
        )


def draw_importances(importances: dict[str, float], path: Path) -> Path | None:
    """Optuna's parameter importances as horizontal bars, the most important on top."""
    if not importances:
        return None
    with plain_style():
        return _draw_importances(importances, path)


def _draw_importances(importances: dict[str, float], path: Path) -> Path:
    names = list(importances)[::-1]
    values = [importances[n] for n in names]
    figure = _figure(4.8, 0.9 + 0.32 * len(names))
    ax = figure.subplots()
    ax.barh(names, values, color="#4c72b0")
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(max(values) * 1.25, 0.05))
    ax.set_xlabel("importance (share of the metric's variance)", fontsize=9)
    ax.tick_params(labelsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    figure.subplots_adjust(left=0.28, right=0.95, top=0.95, bottom=0.72 / (0.9 + 0.32 * len(names)))
    figure.savefig(path)
    return path


def draw_contour(study: optuna.Study, params: list[str], metric: str, path: Path) -> Path | None:
    """Optuna's contour plot of the metric over two parameters (None when it cannot be drawn)."""
    if len(params) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator
    from optuna.visualization import matplotlib as mpl_vis

    try:
        with quiet():
            # Optuna's colours are darker where the metric is better, for min and max alike: the bar says so
            axes = mpl_vis.plot_contour(study, params=params[:2], target_name=f"{metric} (darker is better)")
    except (ValueError, RuntimeError, ImportError):
        return None
    ax = axes.flat[0] if hasattr(axes, "flat") else axes
    figure: Any = ax.figure
    try:
        ax.set_title(f"{metric} over {params[0]} and {params[1]} (completed trials)", fontsize=10)
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":  # plain numbers at 1, 2 and 5 of each decade, none running into another
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
                axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
                axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
                axis.set_tick_params(which="both", labelsize=8)
        figure.set_size_inches(5.8, 4.4)
        figure.subplots_adjust(left=0.15, right=0.93, top=0.9, bottom=0.13)
        figure.savefig(path, dpi=DPI)
    finally:
        plt.close(figure)
    return path


def optuna_pngs(study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's optimization history as PNG (nothing before a trial completed)."""
    if not _complete(study):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as mpl_vis

    written = []
    for name in PNG_PLOTS:
        try:
            with quiet():
                result = getattr(mpl_vis, f"plot_{name}")(study)
        except (ValueError, RuntimeError, ImportError):
            continue
        figure = result.flat[0].figure if hasattr(result, "flat") else result.figure
        try:
            figure.set_size_inches(7.0, 4.0)
            figure.subplots_adjust(left=0.12, right=0.97, top=0.9, bottom=0.14)
            path = folder / f"{name}.png"
            figure.savefig(path, dpi=90)
        finally:
            plt.close(figure)
        written.append(path)
    return written


def optuna_html(study: optuna.Study, folder: Path, contour: list[str]) -> list[Path]:
    """Optuna's history, parallel-coordinate, slice and contour plots, interactive, in ``plots.html``."""
    if not _complete(study):
        return []
    try:
        from optuna import visualization as vis
    except ImportError:
        return []
    parts: list[str] = []
    for name in HTML_PLOTS:
        if name == "contour" and len(contour) < 2:
            continue
        try:
            with quiet():
                plot = getattr(vis, f"plot_{name}")
                figure = plot(study, params=contour[:2]) if name == "contour" else plot(study)
        except (ValueError, RuntimeError, ImportError):
            continue
        parts.append(figure.to_html(full_html=False, include_plotlyjs=not parts))  # plotly.js once, inline
    if not parts:
        return []
    path = folder / "plots.html"
    path.write_text("<!doctype html><meta charset='utf-8'><title>Optuna plots</title>" + "".join(parts))
    return [path]


def _complete(study: optuna.Study) -> bool:
    return any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)

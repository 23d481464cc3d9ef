"""The morning-after view in a real headless Chromium: ``report.html`` and the MLflow UI links of ``sweeps ui``.

A tiny real sweep (the toy trainer with sample images; one trial diverges, ASHA prunes others),
then: the report page shows the learning curves, the best trials' images and the stop table;
``sweeps ui`` prints links, and the comparison link opens the top trials on the swept parameters
against the sweep's metric. Screenshots of each page are saved for a person to look at, in
``$SWEEPS_SCREENSHOTS`` when set, else in the test's temporary folder (the paths are printed).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sweeps.engine.runner import SweepResult, run_sweep
from sweeps.spec.sweep_spec import load_spec
from tests.browser import launch, playwright
from tests.mlflow_server import free_port, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_session")]
ROOT = Path(__file__).resolve().parent.parent
SPEC: dict[str, Any] = {
    "name": "morning-after",
    "trainer": "tests.toy_trainer:ImageToyTrainer",
    "metric": {"name": "val_loss", "mode": "min"},
    "seed": 8,  # random sampling with this seed: five healthy trials, then one that diverges
    "budget": {"trials": 6, "epochs": 3, "concurrency": 1},  # one at a time: ASHA decides the same each run
    "asha": {"grace_period": 2, "reduction_factor": 2},  # a rung at epoch 2, after the divergence in epoch 2
    "search": {"sampler": "random"},
    "params": {
        "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        "width": {"type": "int", "low": 1, "high": 8},
        "behavior": {"choices": ["ok", "diverge"]},
    },
}
TOP_K = 3


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, SweepResult]]:
    folder = tmp_path_factory.mktemp("morning")
    cwd = os.getcwd()
    os.chdir(folder)  # the default sqlite:///mlflow.db lands here
    try:
        (folder / "spec.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
        result = run_sweep(load_spec(folder / "spec.yaml"), root=folder / "runs", name="m1", stream=io.StringIO())
        yield folder, result
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("SWEEPS_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def browser_page(p: Any, width: int = 1500) -> tuple[Any, Any]:
    browser = launch(p)
    return browser, browser.new_page(viewport={"width": width, "height": 1000})


def test_the_sweep_has_a_divergence_a_prune_and_completed_trials(swept: tuple[Path, SweepResult]) -> None:
    _, result = swept
    counts = result.state.counts
    assert counts.get("diverged") == 1 and counts.get("pruned", 0) >= 1 and counts.get("completed", 0) >= TOP_K


def test_the_parent_runs_description_links_the_sweeps_views(swept: tuple[Path, SweepResult]) -> None:
    import mlflow

    _, result = swept
    note = mlflow.MlflowClient(result.tracking_uri).get_run(result.parent_run_id).data.tags["mlflow.note.content"]
    best = result.state.best
    assert best is not None and f"Best: {best.label}" in note
    assert "viewStateShareKey=sweep-" in note and "compareRunsMode=CHART" in note


def test_report_page_shows_curves_samples_and_stops(swept: tuple[Path, SweepResult], shots: Path) -> None:
    _, result = swept
    folder = result.sweep.path / "report"
    for name in ("report.html", "learning_curves.png", "stops.json", "samples.json", "contour.png", "plots.html"):
        assert (folder / name).is_file(), name
    samples = json.loads((folder / "samples.json").read_text())
    assert [s["rank"] for s in samples] == list(range(1, len(samples) + 1)) and len(samples) >= TOP_K
    best = result.state.best
    assert best is not None and samples[0]["trial"] == best.label
    with playwright.sync_playwright() as p:
        browser, page = browser_page(p, 1400)
        page.goto((folder / "report.html").as_uri(), wait_until="load")
        curves = page.locator("#curves img")
        assert curves.count() == 1 and curves.evaluate("img => img.naturalWidth") > 500
        images = page.locator("#samples figure.sample img")
        assert images.count() == len(samples)
        assert all(w > 0 for w in images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)"))
        assert best.label in page.locator("#samples figure.sample.best figcaption").inner_text()
        stops = page.locator("#stops table.stops tbody tr")
        text = [row.inner_text() for row in stops.all()]
        assert any("diverged" in row and "non_finite" in row and "step" in row for row in text), text
        assert any("pruned" in row and "ASHA" in row for row in text), text
        first = page.locator("#trials table.trials tbody tr").first.inner_text()
        assert first.startswith(f"* {best.label}")  # sorted by the metric, best first
        assert page.locator("#mattered img").count() == 2  # importances and the contour
        path = shots / "report.png"
        page.screenshot(path=str(path), full_page=True)
        browser.close()
    print(f"\nscreenshot of report.html: {path}")


@pytest.fixture(scope="module")
def ui(swept: tuple[Path, SweepResult]) -> Iterator[tuple[str, list[str]]]:
    """``sweeps ui`` started as a person starts it: its printed lines, and the server it runs."""
    folder, result = swept
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "sweeps", "ui", "--tracking-uri", result.tracking_uri, "--port", str(port)]
    command += ["--top-k", str(TOP_K)]
    log = (folder / "ui.log").open("w")
    process = subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        while not any("compared on" in line for line in lines):
            line = process.stdout.readline()
            assert line, f"sweeps ui ended early: {lines} {(folder / 'ui.log').read_text()[-2000:]}"
            lines.append(line.strip())
        server = f"http://127.0.0.1:{port}"
        wait_healthy(server, 120)
        yield server, lines
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # mlflow ui and the server processes it started
        process.wait(timeout=30)
        log.close()


def close_assistant(page: Any) -> None:
    """Close the MLflow Assistant panel, where this MLflow has one: the runs get the whole width."""
    close = page.locator("button[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count():
        close.first.click()


def headers_on_screen(page: Any) -> list[str]:
    """The runs table's column headers from left to right as drawn (the grid's DOM order may differ)."""
    script = "cells => cells.map(c => [c.getBoundingClientRect().left, c.offsetWidth, c.innerText.trim()])"
    cells = page.locator("[role=columnheader]").evaluate_all(script)
    drawn = sorted((left, text) for left, width, text in cells if width > 0)  # hidden copies have no width
    return list(dict.fromkeys(text for _, text in drawn))


def link(lines: list[str], words: str) -> str:
    [line] = [line for line in lines if words in line]
    found = re.search(r"https?://\S+", line)
    assert found, line
    return found.group(0)


def test_ui_prints_a_link_to_the_top_trials_compared_on_the_swept_parameters(
    swept: tuple[Path, SweepResult], ui: tuple[str, list[str]], shots: Path
) -> None:
    _, result = swept
    server, lines = ui
    compare = link(lines, "compared on")
    assert "compared on lr, width, behavior against val_loss" in " ".join(lines)
    assert "viewStateShareKey=" in compare and "compareRunsMode=CHART" in compare
    done = [r for r in result.state.trials.values() if r.status == "completed" and r.value is not None]
    top = sorted(done, key=lambda r: float(r.value or 0))[:TOP_K]
    others = [r for r in result.state.trials.values() if r not in top]
    with playwright.sync_playwright() as p:
        browser, page = browser_page(p, 1900)
        page.goto(compare, wait_until="load")
        page.get_by_text(f"Top {TOP_K} trials by val_loss", exact=True).first.wait_for(timeout=90_000)
        page.get_by_text("Parallel Coordinates", exact=False).first.wait_for(timeout=60_000)
        close_assistant(page)
        for record in top:  # the top trials are the runs listed beside the charts, and only they
            page.get_by_text(record.label, exact=False).first.wait_for(timeout=30_000)
        listed = page.locator("[role=row]").all_inner_texts()
        assert not any(r.label + " " in " ".join(listed) for r in others), listed
        assert page.get_by_text(f"{TOP_K} matching runs").count() == 1
        time.sleep(2)  # let the charts finish drawing for the screenshot
        path = shots / "mlflow_compare.png"
        page.screenshot(path=str(path))
        trials = link(lines, "its trials by")
        page.goto(trials, wait_until="load")
        page.get_by_text(f"{len(result.state.trials)} matching runs").first.wait_for(timeout=90_000)
        close_assistant(page)
        wanted = ["val_loss", "lr", "width", "behavior", "sweep.status", "sweep.reason"]
        deadline = time.monotonic() + 30  # the view's column order is applied once the grid has drawn
        while (shown := [h for h in headers_on_screen(page) if h in wanted]) != wanted and time.monotonic() < deadline:
            time.sleep(1)
        trials_path = shots / "mlflow_trials.png"
        page.screenshot(path=str(trials_path))
        assert shown == wanted, headers_on_screen(page)  # the metric, the swept parameters in order, status, reason
        rows = page.locator("[role=row]").all_inner_texts()
        labels = [found.group(0) for found in (re.search(r"\bt\d{3}\b", r) for r in rows) if found]
        assert labels[:TOP_K] == [r.label for r in top], rows  # best first
        browser.close()
    print(f"\nscreenshots of the MLflow UI: {path} {trials_path}")

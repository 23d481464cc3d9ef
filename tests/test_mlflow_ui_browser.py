"""The MLflow UI in a real headless Chromium: the sweep's child runs, with their param columns."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from sweeps.engine.runner import run_sweep
from sweeps.spec.sweep_spec import load_spec
from sweeps.tracking.mlflow_client import ui_url
from tests.browser import launch, playwright
from tests.helpers import TOY_TRAINER, trial_runs, write_spec
from tests.mlflow_server import Server

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_session")]


@pytest.fixture
def swept(workdir: Path) -> Iterator[tuple[Server, str, list[mlflow.entities.Run]]]:
    spec = {
        "name": "ui-check",
        "trainer": TOY_TRAINER,
        "metric": "val_loss",
        "budget": {"trials": 4, "epochs": 2, "concurrency": 2},
        "params": {"lr": {"low": 1e-4, "high": 1.0, "log": True}, "width": {"type": "int", "low": 1, "high": 8}},
    }
    result = run_sweep(load_spec(write_spec(workdir, spec)), root=workdir / "runs", name="ui1", stream=io.StringIO())
    server = Server(workdir, backend=result.tracking_uri)
    server.start()
    client = mlflow.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("ui-check")
    children = trial_runs(client, experiment.experiment_id)
    yield server, experiment.experiment_id, children
    server.stop()


def test_the_ui_shows_child_runs_with_param_columns(swept: tuple[Server, str, list[mlflow.entities.Run]]) -> None:
    server, experiment_id, children = swept
    assert len(children) == 4
    with playwright.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 2400, "height": 900})
        page.goto(ui_url(server.uri, experiment_id), wait_until="load")
        page.get_by_text("ui1", exact=True).first.wait_for(timeout=60_000)  # the parent run
        parent_row = page.locator("[role=row]", has_text="ui1").first
        parent_row.locator("button[data-component-id*='runnamecellrenderer']").click()  # expand its children
        for run in children:
            page.get_by_text(run.info.run_name, exact=True).first.wait_for(timeout=30_000)
        page.get_by_role("button", name="Columns", exact=True).click()
        menu = page.locator("[role=dialog]").first
        for column in ("lr", "width", "sweep.status"):
            menu.get_by_text(column, exact=True).first.click()
        page.keyboard.press("Escape")
        headers = [h.inner_text() for h in page.locator("[role=columnheader]").all()]
        assert {"lr", "width", "sweep.status"} <= set(headers)
        rows = " ".join(r.inner_text() for r in page.locator("[role=row]").all())
        for run in children:
            assert run.data.params["lr"] in rows and run.data.tags["sweep.status"] in rows
        browser.close()

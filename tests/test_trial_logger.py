"""The MLflow trial logger: epoch metrics sent with the step batches; a restarted trial resends what never arrived."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest

from sweeps.tracking.curves import CurveHistory
from sweeps.tracking.mlflow_client import client
from sweeps.tracking.sweep_tracker import SweepTracker
from sweeps.tracking.trial_logger import STALE_SPOOL_S, TrialLogger, remove_stale_spools
from sweeps.trial.epoch_loop import reload_curves


def test_short_epochs_reach_mlflow_in_one_batch_and_long_ones_each_as_it_ends(tmp_path: Path) -> None:
    """Epoch metrics wait in the step buffer until ``every_s`` has passed since the last send, or a flush."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = client(uri)
    experiment = store.create_experiment("batch", artifact_location=(tmp_path / "artifacts").as_uri())
    stored = {}
    for every_s in (60.0, 0.0):
        run_id = store.create_run(experiment).info.run_id
        logger = TrialLogger(uri, run_id, every_s=every_s)
        for epoch in (1, 2, 3):
            logger.add_step(epoch, {"loss": 1.0 / epoch})
            logger.log_metrics({"val_loss": 2.0 / epoch}, step=epoch)
        assert logger.sender.drain(timeout=60)
        stored[every_s] = len(store.get_metric_history(run_id, "val_loss"))
        assert logger.flush(timeout=60) and logger.undelivered() == []
        assert [m.step for m in store.get_metric_history(run_id, "val_loss")] == [1, 2, 3]
        assert [m.step for m in store.get_metric_history(run_id, "loss")] == [1, 2, 3]
        logger.log_texts({"config.yaml": "lr: 0.1\n", "source/toy.py": "x = 1\n"})
        assert logger.close(timeout=60)
    assert stored == {60.0: 0, 0.0: 3}  # nothing sent before the flush; each epoch at once
    files = {f.path for f in store.list_artifacts(run_id)} | {f.path for f in store.list_artifacts(run_id, "source")}
    assert files == {"config.yaml", "source", "source/toy.py"}


def test_an_epoch_reaches_mlflow_while_the_trial_hangs_after_it(tmp_path: Path) -> None:
    """A user's trial validated epoch 1, then hung (or was killed): epoch 1 was never sent, as no step came after."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = client(uri)
    run_id = store.create_run(
        store.create_experiment("hang", artifact_location=(tmp_path / "artifacts").as_uri())
    ).info.run_id
    logger = TrialLogger(uri, run_id, every_s=0.3)
    logger.add_step(1, {"loss": 1.0})
    logger.flush(timeout=60)  # a send just now: epoch 1's metric, next, is not due
    logger.log_metrics({"val_loss": 0.5}, step=1)
    assert logger.pending  # buffered; the trial now hangs: no step, no epoch, no flush
    deadline = time.monotonic() + 30
    while not store.get_metric_history(run_id, "val_loss") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [(m.step, m.value) for m in store.get_metric_history(run_id, "val_loss")] == [(1, 0.5)]
    assert logger.close(timeout=60)


def test_fast_steps_are_thinned_but_notable_ones_epoch_ends_and_those_before_a_stop_are_recorded(
    tmp_path: Path,
) -> None:
    """``step_every_s``: the first step, notable steps, each epoch's last step; the held ones when the trial stops."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = client(uri)
    experiment = store.create_experiment("thin", artifact_location=(tmp_path / "artifacts").as_uri())

    def steps(run_id: str, key: str = "loss") -> list[int]:
        return sorted(m.step for m in store.get_metric_history(run_id, key))

    run_id = store.create_run(experiment).info.run_id
    logger = TrialLogger(uri, run_id, step_every_s=3600.0)
    for step in range(1, 11):
        loss = float("nan") if step == 5 else 1.0 / step
        logger.add_step(step, {"loss": loss, "model/skipped": float(step == 7)})
    logger.log_metrics({"val_loss": 0.5}, step=1)  # the end of epoch 1: its last step, 10, is recorded
    for step in range(11, 100):
        logger.add_step(step, {"loss": 1.0, "model/skipped": 0.0})
    assert logger.flush(timeout=60)
    assert steps(run_id) == [1, 5, 7, 10]  # first, non-finite, overflow, epoch end
    logger.record_held()  # the trial stops: the newest HELD steps left out are recorded too
    assert logger.close(timeout=60)
    held = list(range(99 - TrialLogger.HELD + 1, 100))
    assert steps(run_id) == [1, 5, 7, 10, *held]
    assert steps(run_id, "model/skipped") == steps(run_id)

    every = store.create_run(experiment).info.run_id
    logger = TrialLogger(uri, every, step_every_s=0.0)  # 0: every step
    for step in range(1, 21):
        logger.add_step(step, {"loss": 1.0})
    assert logger.close(timeout=60)
    assert steps(every) == list(range(1, 21))


def test_a_restarted_trials_logger_resends_what_never_arrived_and_skips_what_did(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri)
    tracker.start("resume", "resume-1", "", {})
    run_id = tracker.create_trial_run("resume-1", 0, "t0", {"lr": 0.1}, {"lr": 0.1})

    def epoch(logger: TrialLogger, number: int, steps: range) -> None:
        for step in steps:
            logger.add_step(step, {"loss": float(step)})
        logger.log_metrics({"val_loss": 1.0 / number}, step=number)

    first = TrialLogger(uri, run_id)
    epoch(first, 1, range(1, 6))
    assert first.flush(timeout=60) and first.undelivered() == []
    gate = threading.Event()  # the store stops answering: epoch 2 stays queued in this process
    first.sender.submit("store unreachable", gate.wait)
    epoch(first, 2, range(6, 11))
    checkpoint = first.undelivered()  # what the checkpoint of epoch 2 keeps
    assert len(checkpoint) == 6
    # the process dies here, epoch 2 never delivered; a new one restarts from the checkpoint
    second = TrialLogger(uri, run_id)
    second.resume(checkpoint)
    epoch(second, 3, range(11, 16))
    assert second.flush(timeout=60)
    checkpoint = second.undelivered()  # the checkpoint of epoch 3: all delivered
    for step in range(16, 19):  # part of epoch 4 arrives, then the node dies
        second.add_step(step, {"loss": float(step)})
    assert second.flush(timeout=60)
    third = TrialLogger(uri, run_id)
    third.resume(checkpoint)
    curves = CurveHistory()
    reload_curves(third, curves, checkpoint)
    for step in range(16, 21):  # epoch 4 again: steps 16-18 are in the store already
        curves.add(step, {"loss": float(step)})
    epoch(third, 4, range(16, 21))
    assert third.close(timeout=60)  # (the first process stays dead: its gate never opens)

    client = mlflow.MlflowClient(uri)
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    epochs = [m.step for m in client.get_metric_history(run_id, "val_loss")]
    assert sorted(steps) == list(range(1, 21)), collections.Counter(steps)
    assert sorted(epochs) == [1, 2, 3, 4]
    drawn = [step for step, _ in curves.series["loss"]]  # the curve of the restarted trial starts at step 1
    assert set(drawn) == set(range(1, 21)) and drawn == sorted(drawn)


def test_the_spools_of_killed_trial_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """A trial killed (``kill -9``, ``budget.trial_time``) never closes its logger: its spool stayed in /tmp."""
    import os
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    old = time.time() - STALE_SPOOL_S - 60
    dead = tmp_path / f"sweep-artifacts-{gone.pid}-abc"
    live = tmp_path / f"sweep-artifacts-{os.getpid()}-def"
    fresh = tmp_path / f"sweep-artifacts-{gone.pid}-ghi"  # its process gone a moment ago: maybe still in use
    for spool in (dead, live, fresh):
        (spool / "0").mkdir(parents=True)
        (spool / "0" / "sample.png").write_bytes(b"x")
    for spool in (dead, live):
        os.utime(spool, (old, old))
    assert remove_stale_spools(str(tmp_path)) == [dead]
    assert not dead.exists() and live.exists() and fresh.exists()


def test_a_call_the_store_refuses_is_given_up_soon_and_the_calls_behind_it_go_through(tmp_path: Path) -> None:
    """A param logged again with another value is refused on every try: it used to hold the queue 15 minutes."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = client(uri)
    run_id = store.create_run(
        store.create_experiment("refused", artifact_location=(tmp_path / "artifacts").as_uri())
    ).info.run_id
    store.log_param(run_id, "lr", "0.1")
    logger = TrialLogger(uri, run_id)  # patience: 900 s
    started = time.monotonic()
    logger.sender.submit("log param", lambda: store.log_param(run_id, "lr", "0.2"))
    logger.log_metrics({"val_loss": 0.5}, step=1)
    assert logger.flush(timeout=60)
    assert time.monotonic() - started < 30
    assert logger.sender.failed == ["log param"]
    assert [m.value for m in store.get_metric_history(run_id, "val_loss")] == [0.5]
    assert store.get_run(run_id).data.params == {"lr": "0.1"}
    assert not logger.close(timeout=60)  # the refused call is reported as not delivered


def test_a_tracking_server_that_does_not_answer_is_waited_for_and_a_store_error_is_not() -> None:
    """A sweep's server was down 2 minutes: MLflow's own retries, up to 2 minutes apart inside each of the
    engine's, kept it standing 2 minutes more after the server was back (and 8 tries would not outlast it)."""
    import pytest

    from sweeps.tracking import mlflow_client

    def failing(times: int, message: str) -> Callable[[], str]:
        left = [times]

        def call() -> str:
            if left[0]:
                left[0] -= 1
                raise ConnectionError(message)
            return "done"

        return call

    down = "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded ... Connection refused"
    assert mlflow_client.retry(failing(12, down), "create run", attempts=3, delay=0.001) == "done"
    with pytest.raises(ConnectionError):
        mlflow_client.retry(failing(12, "database is locked"), "create run", attempts=3, delay=0.001)
    assert mlflow_client.SERVER_RETRY_S <= 5  # back within seconds of the server's return
    assert mlflow_client.HTTP_RETRY_ENV["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"


def test_a_tracking_server_that_answers_503_is_not_said_to_be_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server up but not serving (503 while it starts, from its proxy) was warned of as one that "does not answer".

    A real HTTP server on loopback answers every request 503; MLflow's own client makes the error.
    """
    import http.server

    from mlflow import MlflowClient

    from sweeps.tracking import mlflow_client

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            self.send_response(503)
            self.end_headers()

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for key, value in mlflow_client.HTTP_RETRY_ENV.items():
        monkeypatch.setenv(key, value)
    try:
        with pytest.raises(Exception) as raised:
            MlflowClient(f"http://127.0.0.1:{server.server_address[1]}").get_experiment("0")
    finally:
        server.shutdown()
    assert mlflow_client.unreachable(raised.value)  # retried for as long as a server that is down
    assert mlflow_client.unreachable_state(raised.value) == "answers HTTP 503 (up, not serving yet)"
    refused = ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded (Connection refused)")
    assert mlflow_client.unreachable_state(refused) == "does not answer"

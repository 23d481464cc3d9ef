"""Bad input outside the spec: one line saying what is wrong and what to do, exit 2, nothing left behind.

The table re-runs what a new user tried (issue 19): each row is a command in a fresh folder, its
exit code, the pattern of its one line, and a check that the folder holds exactly what it held
before (no sweep folder, no ``mlflow.db``, nothing outside ``sweep_runs``). Every network address
here is on loopback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path

import pytest
import yaml

from sweeps import cli

ROOT = Path(__file__).resolve().parent.parent

SPEC = {
    "name": "toy",
    "trainer": "tests.toy_trainer:ToyTrainer",
    "metric": {"name": "val_loss", "mode": "min"},
    "budget": {"trials": 2, "epochs": 1, "concurrency": 1},
    "asha": False,
    "params": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
}
EXPORTED = {
    "trainer": "tests.toy_trainer:ToyTrainer",
    "epochs": 1,
    "metric": {"name": "val_loss", "mode": "min", "value": 1.0},
    "config": {"lr": 0.01},
    "source": {"sweep": "../../etc/evil", "trial": 0},
}


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def snapshot(folder: Path) -> dict[str, int]:
    """Every file and folder under ``folder`` with its size (folders: -1)."""
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1) for p in folder.rglob("*")}


@dataclass
class Row:
    what: str
    argv: list[str]
    pattern: str
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None


def _not_a_database(folder: Path) -> None:
    (folder / "mlflow.db").write_text("these are my notes, not a database\n")


def _foreign_database(folder: Path) -> None:
    with sqlite3.connect(folder / "mlflow.db") as db:
        db.execute("CREATE TABLE people (name TEXT)")


def _mlflow_like_store(folder: Path) -> None:
    with sqlite3.connect(folder / "mlflow.db") as db:
        db.execute("CREATE TABLE experiments (experiment_id INTEGER)")


def _real_store(folder: Path) -> None:
    from mlflow import MlflowClient

    MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").create_experiment("e")


def _exported_with_bad_provenance(folder: Path) -> None:
    (folder / "best.yaml").write_text(yaml.safe_dump(EXPORTED))


def _taken_name(folder: Path) -> None:
    (folder / "sweep_runs" / "taken").mkdir(parents=True)


def _earlier_sweep_maximising(folder: Path) -> None:
    from sweeps.spec.sweep_spec import load_spec
    from sweeps.store.study import create_study
    from sweeps.store.sweep_dir import new_sweep_dir

    (folder / "max.yaml").write_text(yaml.safe_dump({**SPEC, "metric": {"name": "val_loss", "mode": "max"}}))
    earlier = new_sweep_dir(folder / "sweep_runs", "old")
    earlier.write_meta({"status": "completed", "metric": "val_loss", "mode": "max"})
    create_study(earlier, load_spec(folder / "max.yaml"))


def _finished_sweep_without_results(folder: Path) -> None:
    from sweeps.store.sweep_dir import new_sweep_dir

    done = new_sweep_dir(folder / "sweep_runs", "done")
    done.write_meta({"status": "completed", "tracking_uri": "sqlite:///m.db", "parent_run_id": "p1"})


def _finished_sweep_whose_journal_was_cut(folder: Path, keep_first: bool = False) -> None:
    """A real Optuna journal of two completed trials, cut short in the second's record (or the first's)."""
    import optuna

    from sweeps.store.study import open_storage
    from sweeps.store.sweep_dir import new_sweep_dir

    cut = new_sweep_dir(folder / "sweep_runs", "cut")
    meta = {"status": "completed", "trials": 2, "tracking_uri": "sqlite:///m.db", "parent_run_id": "p1"}
    cut.write_meta({**meta, "trainer": "vae", "epochs": 1, "metric": "val_mse", "mode": "min"})
    study = optuna.create_study(storage=open_storage(cut), study_name="cut")
    first = study.ask()
    first.set_user_attr("config", {"lr": 0.1})
    whole = cut.optuna_journal.read_bytes()
    study.tell(first, 0.5)
    if keep_first:
        whole = cut.optuna_journal.read_bytes()
    study.tell(study.ask(), 0.25)
    cut.optuna_journal.write_bytes(cut.optuna_journal.read_bytes()[: len(whole) + 40])


def _finished_sweep_whose_journal_is_empty(folder: Path) -> None:
    """A user's finished sweep whose optuna-journal.log was left with 0 bytes (a full disk)."""
    _finished_sweep_whose_journal_was_cut(folder)
    (folder / "sweep_runs" / "cut" / "optuna-journal.log").write_bytes(b"")


def _sweep_folder_without_its_sweep_json(folder: Path) -> None:
    (folder / "sweep_runs" / "gone").mkdir(parents=True)
    (folder / "sweep_runs" / "gone" / "spec.yaml").write_text("name: x\n")


STALE_FILE = r"Ray's default-address file \S+ray_current_cluster names 127\.0\.0\.1:\d+ \(from an earlier 'ray start'\)"
ROWS = [
    # --check refuses what the run would refuse before Ray starts (it used to pass these three)
    Row(
        "--check: a name that is taken",
        ["run", "s.yaml", "--name", "taken", "--check"],
        r"sweep 'taken' already exists in \S+sweep_runs; choose another --name",
        setup=_taken_name,
    ),
    Row(
        "--check: workers a new local Ray cannot hold",
        ["run", "s.yaml", "--set", "budget.workers_per_trial=3", "--cpus", "2", "--check"],
        r"s\.yaml: budget\.workers_per_trial: 3 workers x 1 CPU need 3 CPUs; a new local Ray on this machine has 2$",
    ),
    Row(
        "--check: a trial needs more CPUs than a new local Ray gets (it would wait forever)",
        ["run", "s.yaml", "--set", "budget.cpus_per_trial=3", "--cpus", "2", "--check"],
        r"s\.yaml: budget\.cpus_per_trial: a trial needs 3 CPUs; a new local Ray on this machine has 2$",
    ),
    Row(
        "--check: a trial needs a GPU this machine lacks",
        ["run", "s.yaml", "--set", "budget.gpus_per_trial=1", "--check"],
        r"s\.yaml: budget\.gpus_per_trial: a trial needs 1 GPU; a new local Ray on this machine has 0$",
    ),
    Row(
        "--check: a GPU device, but no GPU reserved (a trial that reserves none sees none)",
        ["run", "s.yaml", "--set", "trainer=vae", "--set", "metric.name=val_mse", "--set", "device=cuda", "--check"],
        r"s\.yaml: fixed\.device: cuda, but budget\.gpus_per_trial is 0 and a trial that reserves no GPU sees none; "
        r"set budget\.gpus_per_trial \(1: a GPU each, 0\.25: four trials to a GPU\)$",
    ),
    Row(
        "--check: a GPU device and a GPU reserved, on a machine without one",
        [
            "run",
            "s.yaml",
            "--set",
            "trainer=vae",
            "--set",
            "metric.name=val_mse",
            "--set",
            "device=cuda:0",
            "--set",
            "budget.gpus_per_trial=0.5",
            "--check",
        ],
        r"s\.yaml: budget\.gpus_per_trial: a trial needs 0\.5 GPUs; a new local Ray on this machine has 0$",
    ),
    Row(
        "--check: a device torch has not heard of",
        ["run", "s.yaml", "--set", "trainer=vae", "--set", "metric.name=val_mse", "--set", "device=tpu", "--check"],
        r"'tpu' is not a device",
    ),
    Row(
        "--check: an address that is not HOST:PORT",
        ["run", "s.yaml", "--address", "127.0.0.1:abc", "--check"],
        r"Ray address '127\.0\.0\.1:abc' \(--address\) is not HOST:PORT",
    ),
    Row(
        "--check: a spec name too long for a sweep's folder",
        ["run", "s.yaml", "--set", "name=" + "a" * 130, "--check"],
        r"sweep name 'a{130}-\d{8}-\d{6}' is not allowed",
    ),
    Row(
        "--check: $MLFLOW_TRACKING_URI is the store when --tracking-uri is not given",
        ["run", "s.yaml", "--check"],
        r"no MLflow server answers at http://127\.0\.0\.1:\d+",
        env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:{free}"},
    ),
    Row(
        "run: --resume, as Ray Tune spells it, points to the command",
        ["run", "s.yaml", "--resume"],
        r"^error: sweeps: unrecognized arguments: --resume; to go on with an interrupted sweep, "
        r"run 'sweeps resume SWEEP'",
    ),
    Row("run: --tracking-uri empty", ["run", "s.yaml", "--tracking-uri", ""], r"^error: --tracking-uri: empty;"),
    Row("--check: storage that is a URL", ["run", "s.yaml", "--storage", "s3://b/x", "--check"], r"not a URL"),
    Row(
        "--check: storage where no folder can be made",
        ["run", "s.yaml", "--storage", "/proc/sweeps-x", "--check"],
        r"storage '/proc/sweeps-x': cannot make a folder in /proc",
    ),
    Row(
        "--check: a warm start from a sweep of the other direction",
        ["run", "s.yaml", "--warm-start", "old", "--check"],
        r"--warm-start old: that sweep optimised val_loss \(max\), this spec val_loss \(min\)",
        setup=_earlier_sweep_maximising,
    ),
    Row(
        "name outside sweep_runs",
        ["run", "s.yaml", "--name", "../../etc/evil"],
        r"sweep name '\.\./\.\./etc/evil' is not allowed: use one folder name",
    ),
    Row("nested name", ["run", "s.yaml", "--name", "a/b"], r"sweep name 'a/b' is not allowed"),
    Row(
        "unsupported tracking scheme",
        ["run", "s.yaml", "--tracking-uri", "ftp://x"],
        r"MLflow cannot keep runs at a 'ftp' URI; pass sqlite:///",
    ),
    Row(
        "a tracking URI without '//'",
        ["run", "s.yaml", "--tracking-uri", "file:afile.txt"],
        r"tracking URI 'file:afile\.txt' is neither a folder's path nor a URI \(a URI has '//' after 'file:'\)",
    ),
    Row(
        "a sqlite tracking URI without '//'",
        ["run", "s.yaml", "--tracking-uri", "sqlite:mlflow.db", "--check"],
        r"tracking URI 'sqlite:mlflow\.db' is neither a folder's path nor a URI",
    ),
    Row(
        "no tracking server (port 1)",
        ["run", "s.yaml", "--tracking-uri", "http://127.0.0.1:1"],
        r"no MLflow server answers at http://127\.0\.0\.1:1: connection refused .*--tracking-uri",
    ),
    Row(
        "no tracking server (a free port)",
        ["run", "s.yaml", "--tracking-uri", "http://127.0.0.1:{free}"],
        r"no MLflow server answers at http://127\.0\.0\.1:\d+: connection refused",
    ),
    Row(
        "stale default Ray address, --address auto",
        ["run", "s.yaml", "--address", "auto"],
        rf"--address auto: {STALE_FILE}, where no Ray answers: run 'ray stop' to clear it",
        env={"STALE": "1"},
    ),
    Row(
        "--address that does not answer",
        ["run", "s.yaml", "--address", "127.0.0.1:{free}"],
        r"no Ray cluster answers at 127\.0\.0\.1:\d+ \(--address\) within 3 s: start it",
    ),
    Row(
        "$RAY_ADDRESS that does not answer",
        ["run", "s.yaml"],
        r"no Ray cluster answers at 127\.0\.0\.1:\d+ \(\$RAY_ADDRESS\)",
        env={"RAY_ADDRESS": "127.0.0.1:{free}"},
    ),
    Row(
        "malformed --address",
        ["run", "s.yaml", "--address", "headnode"],
        r"Ray address 'headnode' \(--address\) is not HOST:PORT",
    ),
    Row(
        "mlflow.db that is not a database",
        ["run", "s.yaml"],
        r"mlflow\.db is not a SQLite database \(a corrupt or foreign file\): move it away",
        setup=_not_a_database,
    ),
    Row(
        "mlflow.db of another program",
        ["run", "s.yaml"],
        r"mlflow\.db is a SQLite database but not an MLflow store \(tables: people\)",
        setup=_foreign_database,
    ),
    Row(
        "tracking folder that does not exist",
        ["run", "s.yaml", "--tracking-uri", "sqlite:///nowhere/mlflow.db"],
        r"folder \S+/nowhere does not exist; create it first",
    ),
    Row(
        "tracking store in a folder where no file can be made",  # root passes os.access there; the run failed late
        ["run", "s.yaml", "--check", "--tracking-uri", "sqlite:////sys/mlflow.db"],
        r"cannot create /sys/mlflow\.db: folder /sys is read-only$",
    ),
    Row(
        "an absolute tracking path with three slashes",
        ["run", "s.yaml", "--tracking-uri", "sqlite:///tmp/mlflow.db"],
        r"folder \S+/tmp does not exist; create it first \(sqlite:/// takes a path relative to here; did you mean "
        r"sqlite:////tmp/mlflow\.db\?\)$",
    ),
    Row(
        "--warm-start given twice",  # argparse kept the last, the first dropped with no word
        ["run", "s.yaml", "--warm-start", "a", "--warm-start", "b", "--check"],
        r"--warm-start given twice \(a, b\): it takes one earlier sweep",
    ),
    Row("--cpus 0", ["run", "s.yaml", "--cpus", "0"], r"^error: --cpus: must be >= 1, got 0$"),
    Row(
        "ui on a busy port",
        ["ui", "--port", "{busy}"],
        r"port \d+ on 127\.0\.0\.1 is in use \(another MLflow UI\?\): .*--port \(port \d+ is free\)",
        setup=_mlflow_like_store,
    ),
    Row(
        "ui --sweep that the store does not hold",
        ["ui", "--sweep", "nosuch"],
        r"^error: --sweep nosuch: no sweep of that name in sqlite:///\S+mlflow\.db \('sweeps list' names them\)$",
        setup=_real_store,
    ),
    Row(
        "ui with no store",
        ["ui"],
        r"no MLflow store at \S+/mlflow\.db: run this in the folder that holds the sweeps' mlflow\.db, or pass",
    ),
    Row(
        "export: a name outside sweep_runs",
        ["export", "../../etc/evil"],
        r"'\.\./\.\./etc/evil' is neither a sweep's folder .* nor a sweep name",
    ),
    Row("report: a nested name", ["report", "a/b"], r"'a/b' is neither a sweep's folder"),
    Row("list: --storage a file", ["list", "--storage", "s.yaml"], r"^error: --storage s\.yaml: is a file, not"),
    Row(
        "export: a sweep folder whose sweep.json was deleted",
        ["export", "gone"],
        r"\S+/sweep_runs/gone holds no sweep\.json \(moved or deleted\?\), which names the sweep's MLflow store",
        setup=_sweep_folder_without_its_sweep_json,
    ),
    Row(
        "report: a finished sweep whose results file is gone",
        ["report", "done"],
        r"sweep 'done' ended \(completed\) but its \S+results\.parquet is gone; every trial is still in MLflow "
        r"\(sqlite:///m\.db, parent run p1\) and Optuna",
        setup=_finished_sweep_without_results,
    ),
    Row(
        "export: a finished sweep whose Optuna journal was cut short",
        ["export", "cut", "-o", "b.yaml"],
        r"^error: sweep 'cut' has no completed trial to export: its Optuna study holds 1 of the 2 trials it ran \(the "
        r"journal is damaged or cut short\); every trial is still in MLflow \(sqlite:///m\.db, parent run p1\)$",
        setup=_finished_sweep_whose_journal_was_cut,
    ),
    Row(
        "export: a finished sweep whose Optuna journal is empty",
        ["export", "cut", "-o", "b.yaml"],
        r"^error: no Optuna study 'cut' in \S+optuna-journal\.log \(empty or cut short\): its trials are still "
        r"in MLflow$",
        setup=_finished_sweep_whose_journal_is_empty,
    ),
    Row(
        "export: a file in a folder that does not exist",
        ["export", "any", "-o", "no/such/best.yaml"],
        r"^error: --output no/such/best\.yaml: no folder no/such to write it in \(create it first\)$",
    ),
    Row(
        "export: a file under a file",
        ["export", "any", "-o", "s.yaml/best.yaml"],
        r"^error: --output s\.yaml/best\.yaml: s\.yaml is a file, not a folder to write it in$",
    ),
    Row(
        "report: --html over a file it did not write (the user's spec)",
        ["report", "any", "--html", "s.yaml"],
        r"^error: --html s\.yaml: a file that this command did not write is there; name another$",
    ),
    Row(
        "export: -o over a file it did not write",
        ["export", "any", "-o", "s.yaml"],
        r"^error: --output s\.yaml: a file that this command did not write is there; name another$",
    ),
    Row("export: -o nowhere", ["export", "any", "-o", "/proc/b.yaml"], r"^error: --output /proc/b\.yaml: cannot write"),
    Row(
        "train: --save over the config it trains from, before training",
        ["train", "s.yaml", "--save", "s.yaml"],
        r"^error: --save s\.yaml: a file that this command did not write is there; name another$",
    ),
    Row("audit: --cpus 0", ["audit", "any", "--cpus", "0"], r"^error: --cpus: must be >= 1, got 0$"),
    Row(
        "train: a sweep spec given for an export",
        ["train", "s.yaml"],
        r"^error: s\.yaml: is a sweep spec, not an exported config: run it with 'sweeps run'",
    ),
    Row(
        "run: a trainer named as a file",
        ["run", "s.yaml", "--set", "trainer=./tests/toy_trainer.py:ToyTrainer", "--check"],
        r"name the module by import path from the working directory, not as a file: tests\.toy_trainer:ToyTrainer$",
    ),
    Row("train: --save empty", ["train", "s.yaml", "--save", ""], r"^error: --save: empty; name a file$"),
    Row("report: --html a folder", ["report", "any", "--html", "."], r"^error: --html \.: is a folder; name a file$"),
    Row("resume: a name outside sweep_runs", ["resume", "../x"], r"'\.\./x' is neither a sweep's folder"),
    Row("train: no such file", ["train", "nope.yaml"], r"nope\.yaml: cannot read exported config .*No such file"),
    Row(
        "train: provenance naming a path",
        ["train", "best.yaml"],
        r"best\.yaml: source\.sweep: sweep name '\.\./\.\./etc/evil' is not allowed",
        setup=_exported_with_bad_provenance,
    ),
    Row(
        "a command line argparse cannot parse",
        ["run", "s.yaml", "--trials", "many"],
        r"^error: sweeps run: argument --trials: invalid int value: 'many' \('sweeps run --help' lists the options\)$",
    ),
]


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp/work`` with the spec, as the working directory; ``$RAY_TMPDIR`` is ``tmp/rt`` (no ``ray start`` there)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "s.yaml").write_text(yaml.safe_dump(SPEC))
    monkeypatch.chdir(work)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "rt"))
    return work


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something listens on (and never accepts: the backlog takes the connections)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("row", ROWS, ids=[row.what for row in ROWS])
def test_bad_input_is_one_line_and_leaves_nothing(
    row: Row, user_folder: Path, busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = user_folder.parent
    ports = {"free": str(free_port()), "busy": str(busy_port)}
    argv = [arg.format(**ports) for arg in row.argv]
    for key, value in row.env.items():
        if key == "STALE":  # an earlier `ray start` whose head is gone
            (tmp / "rt" / "ray").mkdir(parents=True)
            (tmp / "rt" / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{ports['free']}")
        else:
            monkeypatch.setenv(key, value.format(**ports))
    if row.setup is not None:
        row.setup(user_folder)
    before = snapshot(tmp)

    started = time.monotonic()
    code, out, err = run_in_process(argv)
    took = time.monotonic() - started

    assert code == row.code, (out, err)
    assert out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(row.pattern, lines[0]), lines[0]
    assert took < 15, f"{took:.1f} s"
    assert snapshot(tmp) == before  # no sweep folder, no mlflow.db, nothing outside sweep_runs


def test_export_from_a_cut_journal_says_the_best_may_be_lost(user_folder: Path) -> None:
    _finished_sweep_whose_journal_was_cut(user_folder, keep_first=True)
    code, out, err = run_in_process(["export", "cut", "-o", "b.yaml"])
    assert code == 0 and out == "wrote b.yaml: t000 of cut, val_mse=0.5\n"
    assert err.strip() == (
        "note: sweep 'cut': its Optuna study holds 1 of the 2 trials it ran (the journal is damaged or cut short); "
        "every trial is still in MLflow (sqlite:///m.db, parent run p1): the best may be a trial the study lost"
    )


def test_the_command_answers_within_seconds_with_no_server_there(user_folder: Path) -> None:
    """``sweeps run --tracking-uri http://127.0.0.1:1`` as a user runs it: a process, one line, exit 2."""
    before = snapshot(user_folder.parent)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sweeps", "run", "s.yaml", "--tracking-uri", "http://127.0.0.1:1"],
        cwd=user_folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: no MLflow server answers at http://127.0.0.1:1: connection refused (nothing listens on port 1); "
        "start the server or pass another --tracking-uri"
    ]
    assert took < 60, f"{took:.1f} s"  # imports (torch, for the spec) are most of it; no Ray is started
    assert snapshot(user_folder.parent) == before


# --- sweep names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vae-demo-20261124-013000", "a", "A.b_c-1", "x" * 128])
def test_names_that_are_one_safe_folder_name(name: str) -> None:
    from sweeps.store.sweep_dir import check_sweep_name

    assert check_sweep_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../x", "a/b", "/abs", "a\\b", ".hidden", "-flag", "a b", "a\nb", "é", "x" * 129, "a\x00"]
)
def test_names_refused(name: str, tmp_path: Path) -> None:
    import sweeps
    from sweeps.store.sweep_dir import SweepStoreError, check_sweep_name, new_sweep_dir

    with pytest.raises(SweepStoreError, match="is not allowed"):
        check_sweep_name(name)
    with pytest.raises(SweepStoreError, match="is not allowed"):
        new_sweep_dir(tmp_path / "runs", name)
    if "\x00" not in name:  # a path with a NUL cannot be looked at
        with pytest.raises(sweeps.SweepStoreError):
            sweeps.open_sweep(tmp_path / "runs", name)  # the public API refuses it too
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_sweep_is_opened_by_name_or_by_its_folder(tmp_path: Path) -> None:
    from sweeps.store.sweep_dir import new_sweep_dir, open_sweep_dir

    sweep = new_sweep_dir(tmp_path / "runs", "s1")
    sweep.write_meta({"name": "s1"})
    assert open_sweep_dir(tmp_path / "runs", "s1") == sweep
    assert open_sweep_dir("elsewhere", str(sweep.path)) == sweep  # a folder's path, as the docs say


def test_a_default_name_taken_in_the_same_second_gets_a_suffix(tmp_path: Path) -> None:
    from sweeps.store.sweep_dir import SweepStoreError, new_sweep_dir

    first = new_sweep_dir(tmp_path, "toy-20261201-120000", unique=True)
    second = new_sweep_dir(tmp_path, "toy-20261201-120000", unique=True)
    assert (first.name, second.name) == ("toy-20261201-120000", "toy-20261201-120000-2")
    with pytest.raises(SweepStoreError, match="already exists"):
        new_sweep_dir(tmp_path, "toy-20261201-120000")  # a name the user chose is never changed


# --- the tracking URI, before anything starts ------------------------------------------------------


class _Reply(BaseHTTPRequestHandler):
    status = 200
    body = b'{"experiments": []}'

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[Callable[[int, bytes], str]]:
    """Start a loopback HTTP server answering every GET with a given status and body; returns its URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(status: int, body: bytes) -> str:
        handler = type("Reply", (_Reply,), {"status": status, "body": body})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_server_answering_as_mlflow_passes(http_server: Callable[[int, bytes], str]) -> None:
    from sweeps.tracking.store_check import check_tracking_uri

    check_tracking_uri(http_server(200, b'{"experiments": []}'), timeout=2)
    check_tracking_uri(http_server(200, b"{}"), timeout=2)


@pytest.mark.parametrize(
    ("status", "body", "pattern"),
    [
        (401, b"login required", r"refused the request \(HTTP 401\): give its login in MLFLOW_TRACKING_USERNAME"),
        (403, b"{}", r"refused the request \(HTTP 403\)"),
        (404, b"<html>not found</html>", r"answered HTTP 404 \(not JSON\), not as an MLflow tracking server"),
        (200, b"<html>a web page</html>", r"answered HTTP 200 \(not JSON\), not as an MLflow tracking server"),
        (500, b'{"error_code": "INTERNAL_ERROR"}', r"answered HTTP 500, not as an MLflow tracking server"),
    ],
)
def test_a_server_that_is_not_mlflow_or_wants_a_login(
    http_server: Callable[[int, bytes], str], status: int, body: bytes, pattern: str
) -> None:
    from sweeps.tracking.store_check import TrackingStoreError, check_tracking_uri

    with pytest.raises(TrackingStoreError, match=pattern):
        check_tracking_uri(http_server(status, body), timeout=2)


def test_a_server_that_accepts_but_never_answers_is_bounded_in_time() -> None:
    from sweeps.tracking.store_check import TrackingStoreError, check_tracking_uri

    with socket.socket() as sock:  # accepts connections (the backlog) and never reads or answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        started = time.monotonic()
        with pytest.raises(TrackingStoreError, match=r"accepted a connection but did not answer within 1 s"):
            check_tracking_uri(f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=1)
        assert time.monotonic() - started < 10


def test_sqlite_stores_checked_without_creating_anything(tmp_path: Path) -> None:
    from sweeps.tracking.store_check import TrackingStoreError, check_tracking_uri

    check_tracking_uri(f"sqlite:///{tmp_path / 'new.db'}")  # a new store: its folder exists
    (tmp_path / "empty.db").write_bytes(b"")
    check_tracking_uri(f"sqlite:///{tmp_path / 'empty.db'}")  # SQLite reads an empty file as a new database
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]
    _mlflow_like_store(tmp_path)
    check_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}", must_exist=True)
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    cases = {
        f"sqlite:///{damaged}": "is a damaged SQLite database",
        f"sqlite:///{tmp_path}": "is a folder, not a SQLite file",
        "sqlite://": "an in-memory store is not shared with the trials",
        f"sqlite:///{tmp_path / 'missing.db'}": "no MLflow store at",
        f"file://{tmp_path / 'empty.db'}": "only with MLFLOW_ALLOW_FILE_STORE=true",
        "sqlite:////dev/null": "is not a regular file",
        "http://": "names no host",
        "http://127.0.0.1:99999": "is not a valid URL",
        "gopher://x": "MLflow cannot keep runs at a 'gopher' URI",
    }
    for uri, message in cases.items():
        with pytest.raises(TrackingStoreError, match=re.escape(message)):
            check_tracking_uri(uri, timeout=1, must_exist=True)
    with pytest.MonkeyPatch.context() as env:  # a folder store, as MLflow 3 allows it
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        with pytest.raises(TrackingStoreError, match="is a file, not a folder"):
            check_tracking_uri(f"file://{tmp_path / 'empty.db'}", timeout=1)
        check_tracking_uri(f"file://{tmp_path / 'runs'}", timeout=1)


def test_two_processes_open_one_new_store_at_once(tmp_path: Path) -> None:
    """MLflow creates its tables when it opens a new database: two at once, under the lock, both open it."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    workers = [context.Process(target=_open_store, args=(uri, barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [results.get(timeout=5) for _ in workers] == ["ok", "ok"]


def _open_store(uri: str, barrier: object, results: object) -> None:
    sys.path.insert(0, str(ROOT))
    from sweeps.tracking.store_check import open_store

    barrier.wait()  # type: ignore[attr-defined]
    try:
        open_store(uri).search_experiments(max_results=1)
        results.put("ok")  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - the test shows what failed
        results.put(f"{type(exc).__name__}: {exc}")  # type: ignore[attr-defined]


def test_a_start_that_fails_leaves_no_folder_and_no_parent_run(
    user_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from sweeps.engine import runner
    from sweeps.spec.sweep_spec import load_spec

    def broken(*args: object) -> None:
        raise RuntimeError("the study could not be made")

    monkeypatch.setattr(runner, "start_ray", lambda **_: None)
    monkeypatch.setattr(runner, "create_study", broken)
    with pytest.raises(RuntimeError, match="could not be made"):
        runner.run_sweep(load_spec("s.yaml"), name="s1")
    assert list((user_folder / "sweep_runs").iterdir()) == []
    runs = MlflowClient(f"sqlite:///{user_folder / 'mlflow.db'}").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{user_folder / 'mlflow.db'}").search_experiments()]
    )
    assert runs == []  # the parent run was made, then deleted


def test_a_store_that_fails_to_open_while_ray_starts_is_the_error(
    user_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store opens in a thread while Ray starts: its one-line error is raised, and nothing is made."""
    from sweeps.engine import runner
    from sweeps.spec.sweep_spec import load_spec
    from sweeps.tracking.store_check import TrackingStoreError

    started: list[dict[str, object]] = []

    def refuse(uri: str) -> None:
        raise TrackingStoreError(f"cannot open the MLflow store {uri}: database is locked")

    monkeypatch.setattr(runner, "start_ray", lambda **kwargs: started.append(kwargs))
    monkeypatch.setattr(runner, "open_store", refuse)
    with pytest.raises(TrackingStoreError, match="database is locked"):
        runner.run_sweep(load_spec("s.yaml"), name="s1", cpus=2, address="local")
    assert [(call["num_cpus"], call["address"]) for call in started] == [(2, "local")]
    assert started[0]["preload"] == ("sweeps.trial.one_worker", "mlflow.store.tracking.sqlalchemy_store")
    assert not (user_folder / "sweep_runs").exists() or list((user_folder / "sweep_runs").iterdir()) == []


# --- Ray's address, before Ray starts -------------------------------------------------------------


def test_ray_addresses(monkeypatch: pytest.MonkeyPatch, busy_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    from sweeps.engine import cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    stale = f"127.0.0.1:{free_port()}"
    monkeypatch.setattr(cluster, "default_ray_address", lambda: None)
    assert cluster.check_ray_address(None) is None  # no earlier `ray start`: Ray starts a local one
    assert cluster.check_ray_address("local") == "local"
    assert cluster.check_ray_address(f"127.0.0.1:{busy_port}") == f"127.0.0.1:{busy_port}"
    assert cluster.check_ray_address(f"ray://127.0.0.1:{busy_port}") == f"ray://127.0.0.1:{busy_port}"

    monkeypatch.setattr(
        cluster, "default_ray_address", lambda: (f"127.0.0.1:{busy_port}", "/tmp/ray/ray_current_cluster")
    )
    assert cluster.check_ray_address(None) is None  # its head answers: Ray joins it
    monkeypatch.setattr(cluster, "default_ray_address", lambda: (stale, "/tmp/ray/ray_current_cluster"))
    assert cluster.check_ray_address(None) == "local"  # the user asked for no cluster: a new local Ray
    assert capsys.readouterr().err == (
        f"note: Ray's default-address file /tmp/ray/ray_current_cluster names {stale} (from an earlier "
        "'ray start'), where no Ray answers; starting a new local Ray ('ray stop' clears the file)\n"
    )
    with pytest.raises(cluster.RayAddressError, match="run 'ray stop' to clear it"):
        cluster.check_ray_address("auto")
    for bad in ("headnode", "host:port", ":6379", "127.0.0.1:0", "127.0.0.1:70000"):
        with pytest.raises(cluster.RayAddressError, match="is not HOST:PORT"):
            cluster.check_ray_address(bad)
    started = time.monotonic()
    with pytest.raises(cluster.RayAddressError, match=r"no Ray cluster answers at .* within 3 s"):
        cluster.check_ray_address(stale)
    assert time.monotonic() - started < 5


def test_ray_default_address_file_follows_ray_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sweeps.compat.ray_internals import default_ray_address

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert default_ray_address() is None
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.0.0.9:6390\n")
    assert default_ray_address() == ("10.0.0.9:6390", str(tmp_path / "ray" / "ray_current_cluster"))


# --- sweeps ui ------------------------------------------------------------------------------------


def test_ui_serves_on_a_free_port_when_the_default_one_is_busy(
    busy_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "UI_PORT", busy_port)
    port = cli._ui_port("127.0.0.1", None)
    assert port != busy_port and cli._can_listen("127.0.0.1", port) == port
    assert capsys.readouterr().err == f"note: port {busy_port} on 127.0.0.1 is in use; serving on port {port}\n"
    with pytest.raises(cli.SpecError, match="must be 1 to 65535"):
        cli._ui_port("127.0.0.1", 70000)


# --- the whole command, real processes ------------------------------------------------------------


@pytest.mark.integration
def test_two_sweeps_at_once_on_a_new_store_despite_a_stale_ray_address(tmp_path: Path) -> None:
    """Two ``sweeps run`` started together in a new folder both finish, on one new ``mlflow.db``.

    Ray's default-address file names a head that is gone (an earlier ``ray start``): each, given
    no ``--address``, says so and starts its own local Ray.
    """
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SPEC))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths have a limit
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(PYTHONPATH=str(ROOT), RAY_TMPDIR=str(ray_tmp))
        command = [sys.executable, "-m", "sweeps", "run", "s.yaml", "--cpus", "1", "--name"]
        both = [
            subprocess.Popen([*command, name], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for name in ("first", "second")
        ]
        outputs = [process.communicate(timeout=500) for process in both]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    for process, (out, err) in zip(both, outputs, strict=True):
        text = out.decode() + err.decode()
        assert process.returncode == 0, text
        assert "Traceback" not in text and "trials 2/2" in out.decode()
        assert err.decode().startswith("note: Ray's default-address file ")
    from mlflow import MlflowClient

    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = store.get_experiment_by_name("toy")
    parents = store.search_runs([experiment.experiment_id], "tags.`sweep.role` = 'parent'")
    assert sorted(r.data.tags["sweep.name"] for r in parents) == ["first", "second"]
    assert {r.info.status for r in parents} == {"FINISHED"}
    assert json.loads((tmp_path / "sweep_runs" / "second" / "sweep.json").read_text())["status"] == "completed"


def test_more_cpus_than_the_machine_has_is_a_note(user_folder: Path) -> None:
    """``--cpus`` above this machine's CPUs is allowed (Ray oversubscribes), but the user is told."""
    cpus = (os.cpu_count() or 1) + 998
    code, out, err = run_in_process(["run", "s.yaml", "--cpus", str(cpus), "--check"])
    assert code == 0 and out.startswith("s.yaml: ok"), (out, err)
    assert err == (
        f"note: --cpus {cpus} is more than this machine's {os.cpu_count()} CPUs: Ray will run {cpus} CPUs' worth of "
        "trials on them at once, each slower\n"
    )
    code, out, err = run_in_process(["run", "s.yaml", "--cpus", "1", "--check"])
    assert code == 0 and err == ""

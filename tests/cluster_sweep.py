"""A sweep on a local multi-node Ray cluster, with the node under a trial killed mid-trial.

Run in its own process (``python -m tests.cluster_sweep WORKDIR [TRIAL_STORAGE]``), apart from the
tests' shared local Ray, with ``RAY_TMPDIR`` set to a folder of its own so no other process on the
machine finds this cluster. It starts a head with no CPUs and three worker nodes of one CPU each
(``ray.cluster_utils.Cluster``: one raylet per node), runs a sweep of the slow toy trainer there,
and once a trial is in its third epoch (its second checkpoint stored) removes that trial's node,
killing its raylet and every process on it. Writes ``WORKDIR/outcome.json``: the sweep, the killed
node, the trial's trace, and Ray's own record of each trial.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.helpers import minimal_toy_spec, trial_runs, write_spec

EPOCHS = 5
KILL_AT_EPOCH = 3


def spec(workdir: Path, trial_storage: str | None) -> dict[str, Any]:
    """Three toy trials of five 1-second epochs, two at a time, every trial run to the end."""
    data = minimal_toy_spec(
        "nodes",
        budget={"trials": 3, "epochs": EPOCHS, "concurrency": 2},
        asha=False,
        search={"sampler": "random"},
        fixed={"epoch_seconds": 1.0, "trace_dir": str(workdir / "trace")},
        # a checkpoint every epoch: the kill falls between two; every step recorded, to count them
        record={"report_every_s": 0, "step_every_s": 0},
        params__lr__log=True,
    )
    if trial_storage:
        data["trial_storage"] = trial_storage
    return data


def kill_node_under_a_trial(cluster: Any, trace: Path, outcome: dict[str, Any], stop: threading.Event) -> None:
    """Wait for a trial in its third epoch, then remove the node it runs on."""
    while not stop.is_set():
        for path in sorted(trace.glob("*.txt")):
            lines = path.read_text().splitlines()
            epoch, node_id, pid, _ = lines[-1].split() if lines else ("0", "", "", "")
            if int(epoch) < KILL_AT_EPOCH:
                continue
            node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
            cluster.remove_node(node, allow_graceful=False)
            outcome["killed"] = {"trace": path.name, "node_id": node_id, "pid": int(pid), "epoch": int(epoch)}
            outcome["killed_s"] = time.monotonic() - outcome["started"]
            outcome["killed_at"] = time.time()
            return
        time.sleep(0.05)


def main(workdir: Path, trial_storage: str | None) -> None:
    """Start the cluster, run the sweep with a node killed under it, record what happened."""
    from ray.cluster_utils import Cluster
    from ray.tune import ExperimentAnalysis

    from sweeps.engine.cluster import start_ray
    from sweeps.engine.runner import run_sweep
    from sweeps.spec.sweep_spec import load_spec

    (workdir / "trace").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(3):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    outcome: dict[str, Any] = {"nodes": [n.node_id for n in cluster.worker_nodes], "started": started}
    stop = threading.Event()
    killer = threading.Thread(
        target=kill_node_under_a_trial, args=(cluster, workdir / "trace", outcome, stop), daemon=True
    )
    try:
        start_ray(address=cluster.address)
        path = write_spec(workdir, spec(workdir, trial_storage), "nodes.yaml")
        outcome["cluster_s"] = time.monotonic() - started
        killer.start()
        result = run_sweep(
            load_spec(path),
            root=workdir / "runs",
            name="nodes",
            tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
            stream=io.StringIO(),
        )
        stop.set()
        meta = result.sweep.read_meta()
        analysis = ExperimentAnalysis(str(meta["ray_experiment"]))
        outcome["ray"] = {
            t.trial_id: {"status": t.status, "failures": t.run_metadata.num_failures} for t in analysis.trials
        }
        outcome["state"] = {
            tid: {"status": r.status, "epochs": r.epochs, "restarts": r.restarts, "run_id": r.run_id}
            for tid, r in result.state.trials.items()
        }
        outcome["sweep"] = str(result.sweep.path)
        outcome["tracking_uri"] = result.tracking_uri
        outcome["ray_experiment"] = meta["ray_experiment"]
        outcome["traces"] = {p.name: p.read_text().splitlines() for p in (workdir / "trace").glob("*.txt")}
        outcome["sweep_s"] = time.monotonic() - started
    finally:
        stop.set()
        import ray

        ray.shutdown()
        cluster.shutdown()
    (workdir / "outcome.json").write_text(json.dumps(outcome, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)


def measure(workdir: Path) -> dict[str, Any]:
    """What the sweep in ``workdir`` recorded, counted: trials lost, duplicated and restarted."""
    import collections

    import mlflow

    from sweeps.store.study import load_study
    from sweeps.store.sweep_dir import SweepDir

    outcome = json.loads((workdir / "outcome.json").read_text())
    client = mlflow.MlflowClient(outcome["tracking_uri"])
    experiment = client.get_experiment_by_name("nodes")
    runs = trial_runs(client, experiment.experiment_id)
    repeated = 0  # epoch or step values logged more than once, over all runs
    for run in runs:
        for key in ("val_loss", "loss"):
            steps = collections.Counter(m.step for m in client.get_metric_history(run.info.run_id, key))
            repeated += sum(n - 1 for n in steps.values())
    study = load_study(SweepDir(Path(outcome["sweep"]).parent, "nodes"))
    planned = len(outcome["state"])
    completed = sum(1 for r in runs if r.data.tags.get("sweep.status") == "completed")
    killed = outcome["killed"]
    lines = [line.split() for line in outcome["traces"][killed["trace"]]]
    moved = [(int(e), float(t)) for e, node, _, t in lines if node != killed["node_id"]]
    return {
        "planned": planned,
        "mlflow_runs": len(runs),
        "optuna_trials": len(study.trials),
        "lost": planned - completed,
        "duplicated_runs": len(runs) - planned + len(study.trials) - planned,
        "repeated_values": repeated,
        "restarted": sum(1 for t in outcome["ray"].values() if t["failures"]),
        "killed_in_epoch": killed["epoch"],
        "resumed_at_epoch": moved[0][0] if moved else None,
        "recovery_s": round(moved[0][1] - outcome["killed_at"], 1) if moved else None,
        "cluster_s": round(outcome["cluster_s"], 1),
        "total_s": round(outcome["sweep_s"], 1),
    }

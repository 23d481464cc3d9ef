"""A trial that reserves no GPU sees none; a machine's GPUs left idle by the spec get a note.

Ray 2.60 leaves ``CUDA_VISIBLE_DEVICES`` alone for an actor that reserved no GPU, so without
the engine hiding them every such trial on ``device: auto`` trains on GPU 0, unreserved. The
real sweep that checks a trial's environment is in ``test_run_sweep.py`` (the plain-loop test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sweeps.engine.cluster import local_gpu_note
from tests.helpers import ROOT, spec_from_dict, toy_spec

PROBE = (
    "import json, os, sys; from sweeps.trial.gpu_visibility import hide_unreserved_gpus; import torch; "
    "hidden = hide_unreserved_gpus(float(sys.argv[1])); "
    "print(json.dumps([hidden, os.environ.get('CUDA_VISIBLE_DEVICES'), torch.cuda.device_count()]))"
)


def _probe(gpus: float, visible: str | None) -> list[object]:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(gpus)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_a_process_that_reserved_no_gpu_hides_them_all_and_one_that_reserved_some_keeps_rays_choice() -> None:
    assert _probe(0, None) == [True, "", 0]
    assert _probe(0, "0,1") == [True, "", 0]  # whatever the process inherited
    assert _probe(0.25, None)[:2] == [False, None]
    assert _probe(1, "3")[:2] == [False, "3"]  # Ray's assignment stands


def test_a_note_says_when_a_local_machines_gpus_would_stay_idle() -> None:
    spec = spec_from_dict(toy_spec())
    note = local_gpu_note(spec, None, gpus=2)
    assert note is not None and note.startswith("0 on a machine with 2 GPUs: the trials reserve none")
    assert local_gpu_note(spec, None, gpus=0) is None
    assert local_gpu_note(spec, "10.0.0.5:6379", gpus=2) is None  # a cluster's GPUs are not this machine's
    reserving = spec_from_dict(toy_spec(budget__gpus_per_trial=0.5))
    assert local_gpu_note(reserving, None, gpus=2) is None

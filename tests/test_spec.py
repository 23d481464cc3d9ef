"""Spec validation: every bad input a user can write is reported, all at once, with its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweeps.cli import main
from sweeps.spec.params import sample
from sweeps.spec.sweep_spec import SpecError, load_spec, read_yaml
from tests.helpers import changed, minimal_toy_spec, write_spec

GOOD = {
    "name": "unit",
    "trainer": "vae",
    "metric": {"name": "val_mse", "mode": "min"},
    "budget": {"trials": 3, "epochs": 2},
    "params": {
        "lr": {"type": "float", "low": "1e-5", "high": "1e-2", "log": True},
        "kernel_size": {"choices": [3, 5]},
        "precision": {"choices": ["fp32", "fp16"]},
        "init_scale": {"type": "float", "low": 128, "high": 65536, "log": True, "when": {"precision": "fp16"}},
    },
}


def problems_of(tmp_path: Path, data: object, **kwargs: object) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, data), **kwargs)  # type: ignore[arg-type]
    return info.value.problems


def test_good_spec_loads_and_reads_exponent_strings_as_numbers(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, GOOD))
    assert spec.params["lr"].low == pytest.approx(1e-5)
    order = list(spec.params)
    assert sorted(order) == ["init_scale", "kernel_size", "lr", "precision"]
    assert order.index("precision") < order.index("init_scale")  # a condition's parent comes first
    text = "trainer: vae\nmetric: val_mse\nfixed: {lr: 1e-5, kl_weight: 3.0e-4}\n"
    spec = load_spec(write_spec(tmp_path, text, "e.yaml"))
    assert spec.fixed == {"lr": 1e-5, "kl_weight": 3e-4}  # YAML read both as strings
    assert spec.resolve({})["lr"] == 1e-5


@pytest.mark.parametrize(
    ("changes", "key", "fragment"),
    [
        ({"trainer": "gan9000"}, "trainer", "unknown trainer 'gan9000'"),
        (
            {"trainer": "examples.denoiser.DenoiserTrainer"},
            "trainer",
            "did you mean 'examples.denoiser:DenoiserTrainer'?",
        ),
        ({"trainer": "no_such_module:Thing"}, "trainer", "cannot import trainer module"),
        ({"params__dropout": {"low": 0, "high": 1}}, "params.dropout", "unknown parameter"),
        ({"fixed": {"dropout": 0.1}}, "fixed.dropout", "unknown parameter"),
        ({"params__lr": {"low": 1, "high": 0.1}}, "params.lr", "low (1.0) > high (0.1)"),
        ({"params__lr": {"low": 0.01, "high": 0.01}}, "params.lr", "low = high = 0.01: nothing to search"),
        (
            {"params__width": {"type": "int", "low": 4, "high": 8, "step": 8}},
            "params.width.step",
            "8 is wider than the range 4..8: only 4 could be drawn",
        ),
        # a step that does not divide the range: Optuna never draws high (a user's 0..1 step 0.3)
        (
            {"params__lr": {"low": 0.0, "high": 1.0, "step": 0.3}},
            "params.lr.step",
            "0.3 does not divide the range 0.0..1.0: 1.0 could never be drawn (Optuna stops at 0.9); make high 0.9",
        ),
        (
            {"params__width": {"type": "int", "low": 2, "high": 11, "step": 4}},
            "params.width.step",
            "4 does not divide the range 2..11: 11 could never be drawn (Optuna stops at 10)",
        ),
        ({"params__lr": {"low": 0, "high": 1, "log": True}}, "params.lr.low", "log scale needs low > 0"),
        ({"params__kernel_size": {"choices": []}}, "params.kernel_size.choices", "non-empty"),
        ({"params__precision": {"choices": ["fp32", "fp8"]}}, "params.precision.choices[1]", "unknown precision 'fp8'"),
        ({"fixed": {"precision": "O7"}}, "fixed.precision", "unknown precision 'O7'"),
        ({"params__init_scale__when": {"precison": "fp16"}}, "params.init_scale.when.precison", "unknown parameter"),
        ({"params__init_scale__when": {"precision": "bf16"}}, "params.init_scale.when.precision", "not among"),
        # conditions that never hold: the parameter would never be drawn
        ({"params__init_scale__when": {"precision": []}}, "params.init_scale.when.precision", "lists no value"),
        ({"params__init_scale__when": {"kernel_size": 9}}, "params.init_scale.when.kernel_size", "not among"),
        ({"params__init_scale__when": {"lr": 0.01}}, "params.init_scale.when.lr", "never gives exactly [0.01]"),
        (
            {
                "params__latent_dim": {"type": "int", "low": 2, "high": 8},
                "params__init_scale__when": {"latent_dim": 100},
            },
            "params.init_scale.when.latent_dim",
            "[100] never drawn from 'latent_dim' (2..8)",
        ),
        ({"budget__trials": 0}, "budget.trials", "must be >= 1"),
        ({"budget__trials": -3}, "budget.trials", "must be >= 1"),
        ({"budget__epochs": "many"}, "budget.epochs", "not a number"),
        ({"budget__epochs": True}, "budget.epochs", "true is not a number"),  # as YAML wrote it, not Python's True
        ({"params__kernel_size": {"type": "int", "low": 3}}, "params.kernel_size.high", "(an int parameter needs"),
        ({"metric": {"name": "val_nope"}}, "metric", "not produced by trainer"),
        ({"metric": {"name": "val_mse", "mode": "down"}}, "metric.mode", "'min' or 'max'"),
        ({"mode": "max", "metric": {"name": "val_mse", "mode": "min"}}, "mode", "max, but metric.mode is min: give"),
        ({"params__kernel_size": {"choices": [3, 4]}}, "params.kernel_size.choices[1]", "odd"),
        # the bounds are odd, 4 between them is not: its trials would fail one by one once started
        (
            {"params__kernel_size": {"type": "int", "low": 3, "high": 7}},
            "params.kernel_size.low+1",
            "got 4; every int from low to high can be drawn (a step, or choices, keeps to some)",
        ),
        ({"params__lr": {"low": 1e-4, "high": 1e-2, "choices": [0.5]}}, "params.lr", "has both choices and low/high"),
        ({"params__lr": {"type": "categorical", "low": 1e-4}}, "params.lr", "categorical takes choices, not low"),
        ({"params__lr__type": "complex"}, "params.lr.type", "must be one of"),
        ({"params__lr__high": None}, "params.lr.high", "missing"),
        ({"params__lr": {"low": 1e-4, "hihg": 1}}, "params.lr.hihg", "unknown key (did you mean 'high'? known:"),
        ({"asha": {"grace_period": 9}}, "asha.grace_period", "more than budget.epochs"),
        # a key the user shortened: the key it begins, not difflib's closest spelling ("brackets")
        ({"asha": {"grace": 2}}, "asha.grace", "unknown key (did you mean 'grace_period'? known:"),
        ({"asha": {"reduction": 2}}, "asha.reduction", "unknown key (did you mean 'reduction_factor'? known:"),
        ({"colour": "blue"}, "colour", "unknown key"),
        ({"search": {"diverged_as": "ignore"}}, "search.diverged_as", "'infeasible' or 'fail'"),
        ({"divergence": {"loss_scale": {"flor": 1}}}, "divergence.loss_scale.flor", "unknown key"),
        ({"divergence": {"non_finite": {"steps": -1}}}, "divergence.non_finite.steps", "at least 1"),
        # settings under which the detector would stop every trial, healthy or not
        ({"divergence": {"loss_explosion": {"factor": 0}}}, "divergence.loss_explosion.factor", "must be >= 1"),
        ({"divergence": {"loss_explosion": {"share": 2}}}, "divergence.loss_explosion.share", "at most 1"),
        ({"divergence": {"non_finite": {"steps": 0}}}, "divergence.non_finite.steps", "at least 1"),
        ({"divergence": {"collapse": {"steps": 1.5}}}, "divergence.collapse.steps", "a whole number"),
        ({"divergence": {"loss_scale": {"floor": float("nan")}}}, "divergence.loss_scale.floor", "finite"),
        ({"metric": {"name": "val_mse", "direction": "max"}}, "metric.direction", "unknown key"),
        ({"metric": 5}, "metric", "5 is not a metric's name"),
        ({"seed": -1}, "seed", "must be from 0 to 2**32 - 1"),
        # a draw the trainer's field cannot take would fail every trial
        ({"params__latent_dim": {"type": "float", "low": 2, "high": 8}}, "params.latent_dim.type", "which is an int"),
        ({"params__output_activation": {"low": 0, "high": 1}}, "params.output_activation.type", "is one of none,"),
        ({"fixed": {"lr": float("nan")}}, "fixed.lr", "must be a finite number"),
        ({"budget__retries": -1}, "budget.retries", "must be >= 0"),
        # a step of 0 or NaN, and an int bound past 2**53: tracebacks from the grid and trainer checks before
        ({"params__lr": {"low": 0.1, "high": 0.5, "step": 0}}, "params.lr.step", "must be a finite number > 0, got 0"),
        ({"params__lr": {"low": 0.1, "high": 0.5, "step": float("nan")}}, "params.lr.step", "finite number > 0"),
        ({"params__latent_dim": {"type": "int", "low": 8, "high": 64, "step": 0}}, "params.latent_dim.step", "> 0"),
        ({"params__latent_dim": {"type": "int", "low": 8, "high": 10**29}}, "params.latent_dim.high", "+-2**53"),
        # a fixed int as large: passed the check, then failed in every trial
        ({"fixed": {"width": "1e22"}}, "fixed.width", "must be within +-2**53 (9007199254740992), got 1e22"),
        ({"asha": "yes please"}, "asha", "must be a mapping or true/false, got 'yes please'"),
        ({"budget": [1, 2]}, "budget", "must be a mapping, got [1, 2]"),
        ({"budget__time": "8 hours"}, "budget.time", "must be a duration > 0 such as 90m, 1h30m, 8h or 3600 (seconds)"),
        ({"budget__time": 0}, "budget.time", "must be a duration > 0"),
        ({"budget__time": "-2h"}, "budget.time", "must be a duration > 0"),
        ({"budget__time": "10m30"}, "budget.time", "must be a duration > 0"),
        ({"budget__time": "1h and 30m"}, "budget.time", "must be a duration > 0"),
        # a unit twice or out of order is a typo, not a sum; beyond a year a slip of the keyboard
        ({"budget__time": "30m30m"}, "budget.time", "must be a duration > 0"),
        ({"budget__time": "30s1m"}, "budget.time", "must be a duration > 0"),
        ({"budget__time": "99999999999d"}, "budget.time", "must be at most a year (365d)"),
        ({"budget__trial_time": 1e12}, "budget.trial_time", "must be at most a year"),
        ({"budget__trial_time": "forever"}, "budget.trial_time", "such as 90m, 1h30m, 8h or 3600"),
        ({"trial_storage": "s4://bucket/sweeps"}, "trial_storage", "unknown scheme 's4://'"),
        ({"trial_storage": "s3://"}, "trial_storage", "names no bucket"),
        ({"trial_storage": ["s3://a"]}, "trial_storage", "must be a URI"),
        ({"params__lr": {"low": 1e-4, "high": 0.1, "log": "yes"}}, "params.lr.log", "must be true or false, got 'yes'"),
    ],
)
def test_each_bad_input_names_its_key(tmp_path: Path, changes: dict[str, object], key: str, fragment: str) -> None:
    problems = problems_of(tmp_path, changed(GOOD, **changes))
    assert any(k == key and fragment in msg for k, msg in problems), problems


def test_sections_turned_on_by_true_and_a_trial_count_given_twice(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, changed(GOOD, asha=True, divergence=True)))
    assert spec.asha.enabled and spec.divergence.enabled
    path = write_spec(tmp_path, GOOD)
    assert load_spec(path, ["budget.trials=3"], trials=3).budget.trials == 3
    with pytest.raises(SpecError, match=r"3 and --set budget\.trials=5 disagree"):
        load_spec(path, ["budget.trials=5"], trials=3)
    problems = dict(problems_of(tmp_path, GOOD, overrides=["lr=-1"]))
    assert problems["--set lr"] == "must be > 0 (params.lr is searched on a log scale), got -1"


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    data = changed(
        GOOD,
        budget__trials=0,
        params__lr={"low": 1, "high": 0.1},
        params__kernel_size={"choices": []},
        params__precision={"choices": ["fp8"]},
    )
    keys = {k for k, _ in problems_of(tmp_path, data)}
    assert {"budget.trials", "params.lr", "params.kernel_size.choices", "params.precision.choices[0]"} <= keys


def test_a_misspelt_bound_is_one_problem_not_also_a_missing_one(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, changed(GOOD, params__lr={"low": 1e-4, "hihg": 1, "log": True}))
    assert [k for k, _ in problems] == ["params.lr.hihg"], problems
    problems = problems_of(tmp_path, changed(GOOD, params__lr={"low": 1e-4, "log": True}))
    assert [k for k, _ in problems] == ["params.lr.high"], problems  # a bound left out is still missing


def test_a_bad_epoch_count_is_not_compared_with_the_grace_period(tmp_path: Path) -> None:
    """``epochs: 0`` is the problem; the grace period is not "more than budget.epochs (1)", a stand-in value."""
    problems = problems_of(tmp_path, changed(GOOD, budget__epochs=0, asha={"grace_period": 5}))
    assert [k for k, _ in problems] == ["budget.epochs"], problems


def test_missing_file_and_yaml_syntax_error_with_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "absent.yaml")
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path)  # a folder is not readable as a file
    with pytest.raises(SpecError, match=r"YAML syntax error at line 3, column 8"):
        load_spec(write_spec(tmp_path, "trainer: vae\nmetric: val_mse\nseed: 1: 2\n"))
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_spec(write_spec(tmp_path, "- just\n- a list\n"))


def test_a_key_given_twice_is_refused_with_its_line_not_silently_the_last(tmp_path: Path) -> None:
    head = "name: x\ntrainer: vae\nmetric: val_mse\n"
    twice = head + "params:\n  lr: {low: 1e-4, high: 1e-2}\n  lr: {low: 1e-3, high: 1}\n"
    with pytest.raises(SpecError, match=r"YAML error at line 6, column 3: key 'lr' given twice"):
        load_spec(write_spec(tmp_path, twice))
    merged = "base: &b {low: 1e-4, high: 1e-2}\n" + head + "params: {lr: {<<: *b, log: true}}\n"
    assert read_yaml(write_spec(tmp_path, merged))["params"]["lr"] == {"low": "1e-4", "high": "1e-2", "log": True}


def test_fp16_on_trials_with_no_gpu_gets_a_note_that_cpus_run_it_many_times_slower(tmp_path: Path) -> None:
    """A user's flow took 80 s an epoch in fp16 on the CPU against 1.5 s in fp32, and --check said only 'ok'."""
    notes = dict(load_spec(write_spec(tmp_path, GOOD)).notes)
    assert notes["params.precision"] == (
        "fp16 on trials with no GPU (budget.gpus_per_trial 0): CPUs run float16 many times slower than fp32 or bf16 "
        "(an epoch of the vae trainer 20x, a user's normalizing flow 50x, on 2 CPUs), so such trials take most of "
        "the time; fp16 pays off on GPUs"
    )
    fixed = changed(GOOD, params={"lr": GOOD["params"]["lr"]}, fixed={"precision": "O2"})
    assert dict(load_spec(write_spec(tmp_path, fixed)).notes)["fixed.precision"].startswith("O2 on trials with no GPU")
    for quiet in (
        changed(GOOD, budget={"trials": 3, "epochs": 2, "gpus_per_trial": 0.5}),  # on GPUs: what fp16 is for
        changed(GOOD, params={"lr": GOOD["params"]["lr"], "precision": {"choices": ["fp32", "bf16"]}}),
    ):
        assert not any(key.endswith("precision") for key, _ in load_spec(write_spec(tmp_path, quiet)).notes)


def test_retries_and_trial_storage_default_and_override(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, GOOD))
    assert spec.budget.retries == 3 and spec.trial_storage is None
    spec = load_spec(write_spec(tmp_path, GOOD), ["budget.retries=0", "trial_storage=s3://bucket/sweeps"])
    assert spec.budget.retries == 0 and spec.trial_storage == "s3://bucket/sweeps"


def test_a_time_budget_reads_as_seconds_and_notes_the_trials_that_may_end_it_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load_spec(write_spec(tmp_path, GOOD)).budget.time_s is None
    spec = load_spec(write_spec(tmp_path, GOOD), ["budget.time=1.5h"])
    assert spec.budget.time_s == 5400.0 and not any(key == "budget.time" for key, _ in spec.notes)
    short = dict(load_spec(write_spec(tmp_path, GOOD), ["budget.time=3", "budget.trials=50"]).notes)
    assert short["budget.time"].startswith("3 s: on 2 CPUs a sweep's first validation came 10-12 s after its start")
    for value, seconds in (
        ("90m", 5400.0),
        ("45s", 45.0),
        (3600, 3600.0),
        ("2d", 172800.0),
        ("1h30m", 5400.0),
        ("1m90s", 150.0),
        ("365d", 31536000.0),
    ):
        spec = load_spec(write_spec(tmp_path, changed(GOOD, budget={"time": value})))
        assert spec.budget.time_s == seconds
        assert ("budget.time", "the sweep also ends after budget.trials (10) trials; set budget.trials high to "
                "use all the time") in spec.notes  # fmt: skip
    assert main(["run", str(write_spec(tmp_path, GOOD)), "--check", "--set", "budget.time=90m"]) == 0
    assert capsys.readouterr().out.endswith(": ok (4 searched parameters, 3 trials within 1.5h)\n")
    assert load_spec(write_spec(tmp_path, GOOD), ["budget.trial_time=40m"]).budget.trial_time_s == 2400.0
    assert load_spec(write_spec(tmp_path, GOOD), ["budget.trial_time=10m 30s"]).budget.trial_time_s == 630.0
    assert main(["run", str(write_spec(tmp_path, GOOD)), "--check", "--set", "budget.time=40s", "--set",
                 "budget.trial_time=10m"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert out.endswith(": ok (4 searched parameters, 3 trials within 40s, each at most 10m)\n")
    assert "note: budget.trial_time: is not shorter than budget.time, which ends every trial first" in err


def test_more_trials_at_once_than_a_local_ray_holds_gets_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user's ``concurrency: 8`` on 2 CPUs passed ``--check`` silently; 2 ran at once."""
    path = str(write_spec(tmp_path, GOOD))
    assert main(["run", path, "--check", "--cpus", "2", "--set", "budget.concurrency=8"]) == 0
    assert "note: budget.concurrency: 8 trials at once, but a new local Ray on this machine holds 2 (2 CPUs, 1 a " \
        "trial): the others wait for a free slot" in capsys.readouterr().err  # fmt: skip
    assert main(["run", path, "--check", "--cpus", "2", "--set", "budget.concurrency=2"]) == 0
    assert "budget.concurrency" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("metric", "noted"),
    [("val/psnr", True), ("val_ssim", True), ("acc", True), ("val_loss", False), ("psnr_loss", False)],
)
def test_a_metric_that_reads_as_better_higher_left_at_min_gets_a_note(tmp_path: Path, metric: str, noted: bool) -> None:
    spec = load_spec(write_spec(tmp_path, minimal_toy_spec(metric=metric)))
    fix = f"metric: {{name: {metric}, mode: max}}"
    note = f"{metric} is minimized (mode: min, the default); if higher is better, write {fix}"
    assert (("metric", note) in spec.notes) is noted
    for given in ({"name": metric, "mode": "min"}, {"name": metric, "mode": "max"}):  # said: no note
        assert not any(
            key == "metric" for key, _ in load_spec(write_spec(tmp_path, minimal_toy_spec(metric=given))).notes
        )


def test_overrides_set_paths_and_fix_parameters(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, GOOD), ["budget.epochs=4", "lr=3e-4", "seed=7"], trials=9)
    assert spec.budget.epochs == 4 and spec.budget.trials == 9 and spec.seed == 7
    assert "lr" not in spec.params and spec.fixed["lr"] == pytest.approx(3e-4)
    keys = {k for k, _ in problems_of(tmp_path, GOOD, overrides=["nonsense", "dropout=0.5"])}
    assert keys == {"--set nonsense", "--set dropout"}
    problems = dict(problems_of(tmp_path, GOOD, overrides=["lrr=0.1", "zzzz=1"]))
    assert problems["--set lrr"] == "unknown parameter for this trainer (did you mean 'lr'?)"
    assert problems["--set zzzz"].startswith("unknown parameter for this trainer (its fields: batch_size, ")


def test_set_of_a_word_yaml_reads_as_a_boolean_says_so_in_one_line(tmp_path: Path) -> None:
    """``--set precision=no`` gave ``False is not a string``, then a second line about init_scale's condition."""
    problems = problems_of(tmp_path, GOOD, overrides=["precision=off"])
    hint = "(YAML reads an unquoted yes, no, on or off as a boolean: quote the word, e.g. 'off')"
    assert problems == [("fixed.precision", f"False is not a string {hint}")]


@pytest.mark.parametrize("trainer", ["vae", "examples.plain_loop_sweepable:train"])
def test_set_turns_sections_off_by_name_and_a_searched_number_stays_a_number(tmp_path: Path, trainer: str) -> None:
    """``--set asha=false`` is the spec's ASHA, for a class or a function trainer alike (a function takes any key)."""
    text = {**GOOD, "trainer": trainer, "params": {"lr": GOOD["params"]["lr"]}}  # type: ignore[index]
    if trainer != "vae":
        text["metric"] = {"name": "val_loss", "mode": "min"}
    path = write_spec(tmp_path, text)
    spec = load_spec(path, ["asha=false", "divergence=false", "lr=1e-5"])
    assert not spec.asha.enabled and not spec.divergence.enabled
    assert "asha" not in spec.fixed and "divergence" not in spec.fixed and spec.fixed["lr"] == pytest.approx(1e-5)
    overrides = ["lr=1e-3", "width=8", "budget.epochs=3", "seed=3"] + (["lrr=0.1"] if trainer != "vae" else [])
    expected = ["width", "lrr"] if trainer != "vae" else []  # a function takes any key: named in a note
    assert list(load_spec(path, overrides).unnamed_overrides) == expected
    problems = dict(problems_of(tmp_path, text, overrides=["budget=3", "lr=abc"]))
    assert problems["--set budget"] == "is a section of the spec: set its keys, e.g. --set budget.KEY=VALUE"
    assert problems["--set lr"] == "'abc' is not a number (params.lr is searched as one)"


def test_set_of_a_function_trainers_numeric_choice_takes_a_number_only(tmp_path: Path) -> None:
    """A function declares no types: numeric choices say the parameter is a number (a typo is no value)."""
    text = {**GOOD, "trainer": "examples.plain_loop_sweepable:train", "metric": {"name": "val_loss", "mode": "min"}}
    text["params"] = {"width": {"choices": [4, 8]}, "act": {"choices": ["relu", 1]}}
    problems = dict(problems_of(tmp_path, text, overrides=["width=abc", "act=gelu"]))
    assert problems == {"--set width": "'abc' is not a number (params.width is searched as one)"}
    spec = load_spec(write_spec(tmp_path, text), ["width=16", "act=gelu"])  # outside the choices: the user's to fix
    assert spec.fixed["width"] == 16 and spec.fixed["act"] == "gelu"


def test_choices_equal_in_python_are_refused_as_optuna_would_record_one_as_the_other(tmp_path: Path) -> None:
    """A user's ``choices: [1, "two", 3.5, true]``: trials ran with True and the study recorded them as 1."""
    text = {**GOOD, "trainer": "examples.plain_loop_sweepable:train", "metric": {"name": "val_loss", "mode": "min"}}
    text["params"] = {"a": {"choices": [1, "two", 3.5, True]}, "b": {"choices": [0, False, 0.0]}}
    text["params"]["c"] = {"choices": ["1", "true", 2.0]}  # a string like a bool, a float: fine
    # 3 and "3" (the old advice: "quote the others as strings") were apart in Optuna, alike in every record
    text["params"]["d"] = {"choices": [3, "3", 5]}
    problems = dict(problems_of(tmp_path, text))
    said = "are equal in Python, so Optuna records one as the other: keep one"
    assert problems == {
        "params.a.choices": f"choices 1 and true {said}",
        "params.b.choices": f"choices 0, false and 0.0 {said}",
        "params.d.choices": "choices 3 and '3' read the same in MLflow, the tables and the results (each records "
        "the text): keep one",
    }
    assert optuna.distributions.CategoricalDistribution([1, True]).to_internal_repr(True) == 0  # why: True is 1


def test_conditional_parameter_exists_only_under_its_condition(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, GOOD))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = []
    for _ in range(20):
        trial = study.ask()
        values = sample(trial, spec.params, spec.fixed)
        seen.append(values)
        assert ("init_scale" in values) == (values["precision"] == "fp16")
        assert trial.params == values  # the YAML name is the Optuna name
        study.tell(trial, 1.0)
    assert {v["precision"] for v in seen} == {"fp32", "fp16"}


def test_a_condition_on_precision_takes_any_spelling_of_a_choice(tmp_path: Path) -> None:
    """A user's ``when: {precision: O2}`` with ``choices: [fp32, fp16-o2]`` was refused as not among the choices."""
    for choices, when in ((["fp32", "fp16-o2"], "O2"), (["fp32", "O2"], "fp16-o2"), (["fp32", "O1"], ["fp16"])):
        params = {**GOOD["params"], "precision": {"choices": choices}}
        params["init_scale"] = {**GOOD["params"]["init_scale"], "when": {"precision": when}}
        spec = load_spec(write_spec(tmp_path, {**GOOD, "params": params}))
        assert spec.params["init_scale"].when["precision"][0] == choices[1]
        assert spec.params["init_scale"].active({"precision": choices[1]})
    keys = problems_of(
        tmp_path, {**GOOD, "params": {**params, "init_scale": {**params["init_scale"], "when": {"precision": "O2"}}}}
    )
    assert keys == [("params.init_scale.when.precision", "['O2'] not among the choices of 'precision'")]


def test_user_trainer_by_import_path_and_its_fields(tmp_path: Path) -> None:
    data = {
        "trainer": "tests.toy_trainer:ToyTrainer",
        "metric": "val_anything",
        "params": {"lr": {"low": 1e-4, "high": 1, "log": True}},
    }
    spec = load_spec(write_spec(tmp_path, data))  # no declared metrics: checked on the first report
    assert spec.resolve({"lr": 0.1}) == {"lr": 0.1, "seed": 0}
    keys = {k for k, _ in problems_of(tmp_path, {**data, "params": {"kernel_size": [3]}})}
    assert keys == {"params.kernel_size"}
    with pytest.raises(SpecError, match="is not a trainer"):
        load_spec(write_spec(tmp_path, {**data, "trainer": "tests.toy_trainer:ToyConfig"}))


TRAINER_METHODS = (
    "    def train_epoch(self):\n        return {}\n    def validate(self):\n        return {'val_loss': 1.0}\n"
    "    def state_dict(self):\n        return {}\n    def load_state_dict(self, state):\n        pass\n"
)
"""The four methods of a minimal class trainer, as the text of a module a test writes (indented for a class body)."""


def test_a_trainer_class_a_spec_could_not_build_is_refused_before_a_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bad_trainers_mod.py").write_text(
        "from dataclasses import dataclass\n\n"
        "@dataclass\nclass Bare:\n    lr: float\n\n"
        "@dataclass\nclass Good:\n    lr: float = 0.1\n\n"
        "class Base:\n    def __init__(self, config):\n        self.config = config\n" + TRAINER_METHODS + "\n"
        "class NoDefault(Base):\n    Config = Bare\n\n"
        "class NoConfigArgument(Base):\n    Config = Good\n    def __init__(self):\n        pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = {"metric": "val_loss", "budget": {"trials": 1, "epochs": 1}}
    problems = dict(problems_of(tmp_path, {**data, "trainer": "bad_trainers_mod:NoDefault"}))
    assert problems["trainer"].endswith("is not a trainer: its Config field(s) lr have no default")
    problems = dict(problems_of(tmp_path, {**data, "trainer": "bad_trainers_mod:NoConfigArgument"}))
    assert problems["trainer"].endswith("its constructor must take the config, NoConfigArgument(config)")


def test_a_precision_alias_a_literal_field_refuses_says_which_name_to_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's ``Literal["fp32", "bf16", "fp16", "fp16-o2"]`` field refused ``O1``, which the docs call an alias."""
    (tmp_path / "literal_trainer_mod.py").write_text(
        "from dataclasses import dataclass\nfrom typing import Literal\n\n"
        "@dataclass\nclass Config:\n    lr: float = 0.1\n"
        "    precision: Literal['fp32', 'bf16', 'fp16', 'fp16-o2'] = 'fp32'\n\n"
        "class Tiny:\n    Config = Config\n    precisions = ('fp32', 'bf16', 'fp16', 'fp16-o2')\n"
        "    def __init__(self, config):\n        self.config = config\n" + TRAINER_METHODS
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = {"trainer": "literal_trainer_mod:Tiny", "metric": "val_loss", "params": {"precision": ["fp32", "O1"]}}
    problems = dict(problems_of(tmp_path, data))
    assert problems["params.precision.choices[1]"].endswith(
        "(the trainer's precision field takes no alias: write fp16)"
    ), problems


def test_cli_bad_spec_exits_2_with_one_line_per_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec(tmp_path, changed(GOOD, budget__trials=0, params__lr={"low": 1, "high": 0.1}))
    assert main(["run", str(path), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(str(path) in line for line in err)
    assert not (tmp_path / "runs").exists()
    assert main(["run", str(write_spec(tmp_path, GOOD, "g.yaml")), "--trials", "0"]) == 2
    assert "budget.trials: must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("trainer", "source", "line"),
    [
        (
            "broken:train",
            "import math\ndef train(config, run)\n    pass\n",
            "SyntaxError: expected ':' (broken.py, line 2)",
        ),
        (
            "raises:train",
            "SIZE = int('sixteen')\ndef train(config, run):\n    pass\n",
            "ValueError: invalid literal for int() with base 10: 'sixteen' (raises.py, line 1)",
        ),
        (
            "deep:train",  # raised in an installed package: placed at the user's line that called it
            "import json\nCONFIG = json.loads('{bad')\ndef train(config, run):\n    pass\n",
            "JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1) "
            "(deep.py, line 2)",
        ),
        (":train", "", "trainer ':train': write module:Class or module:function (both parts named)"),
        ("raises:", "", "trainer 'raises:': write module:Class or module:function (both parts named)"),
    ],
)
def test_a_trainer_module_that_fails_at_import_is_one_line_before_anything_starts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    trainer: str,
    source: str,
    line: str,
) -> None:
    """Not only a missing module: a syntax error or any exception raised by the module's own code at import."""
    module = trainer.partition(":")[0]
    if module:
        (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_spec(tmp_path, {"trainer": trainer, "metric": "val_loss", "params": {"lr": {"low": 0.1, "high": 1}}})
    assert main(["run", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"error: {path}: trainer: ") and line in err, err


def test_cli_bad_input_starts_no_ray(tmp_path: Path) -> None:
    code = (
        "import sys; from sweeps.cli import main; rc = main(sys.argv[1:]);"
        "sys.exit(rc if 'ray' not in sys.modules else 99)"
    )
    missing = subprocess.run(
        [sys.executable, "-c", code, "run", str(tmp_path / "nope.yaml")], capture_output=True, text=True, cwd=tmp_path
    )
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "cannot read spec file" in missing.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_a_parameter_a_fixed_value_keeps_from_being_drawn_is_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--set precision=fp32`` pins the precision: ``init_scale`` (drawn under fp16) is never drawn, and says so."""
    path = write_spec(tmp_path, GOOD)
    assert [key for key, _ in load_spec(path).notes] == ["params.precision"]  # fp16 on a CPU, no other
    pinned = load_spec(path, ["precision=fp32"])
    assert pinned.notes == (("params.init_scale", "never drawn: drawn only when precision is 'fp16', fixed to 'fp32'"),)
    study = optuna.create_study()
    assert "init_scale" not in sample(study.ask(), pinned.params, pinned.fixed)  # the note tells the truth
    from sweeps.engine.runner import drawn_params

    assert drawn_params(pinned) == ["kernel_size", "lr"]  # the parent run's `searched` named init_scale too
    assert main(["run", str(path), "--set", "precision=fp32", "--check"]) == 0
    err = capsys.readouterr().err
    assert err == "note: params.init_scale: never drawn: drawn only when precision is 'fp16', fixed to 'fp32'\n"


def test_a_class_trainers_epochs_field_is_the_budgets(tmp_path: Path) -> None:
    """A class sizing its schedule by a Config ``epochs`` field gets budget.epochs, as ``seed`` gets the seed."""
    data = {**GOOD, "trainer": "tests.toy_trainer:EpochsToyTrainer", "metric": {"name": "val_loss", "mode": "min"}}
    data["params"] = {"lr": GOOD["params"]["lr"]}
    spec = load_spec(write_spec(tmp_path, data), ["budget.epochs=6"])
    assert spec.resolve({"lr": 0.01})["epochs"] == 6
    assert load_spec(write_spec(tmp_path, changed(data, fixed={"epochs": 2}, budget__epochs=2))).budget.epochs == 2
    problems = problems_of(tmp_path, changed(data, fixed={"epochs": 10}))
    assert problems == [
        (
            "fixed.epochs",
            "10 differs from budget.epochs (2): the engine sets the trainer's 'epochs' field to budget.epochs; "
            "set budget.epochs instead",
        )
    ]
    problems = problems_of(tmp_path, changed(data, params__epochs={"choices": [2, 4]}))
    assert [key for key, _ in problems] == ["params.epochs"]


def test_a_trainer_module_that_parses_the_command_line_at_import_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's script with ``argparse`` at module level printed its usage and ended ``sweeps`` with no error line."""
    (tmp_path / "scripted.py").write_text(
        "import argparse\nparser = argparse.ArgumentParser()\nparser.add_argument('--lr')\nargs = parser.parse_args()\n"
        "def train(config, run):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    problems = problems_of(tmp_path, {**GOOD, "trainer": "scripted:train", "params": {}})
    assert problems[0][0] == "trainer" and problems[0][1].startswith(
        "importing trainer module 'scripted' called sys.exit(2) (its command-line parsing or exit runs at import"
    ), problems


def test_a_set_value_outside_the_searched_choices_is_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A user's ``--set schedule=cosin`` (choices onecycle, cosine) passed --check without a word."""
    cpu = {"lr": GOOD["params"]["lr"], "kernel_size": {"choices": [3, 5]}, "precision": {"choices": ["fp32", "bf16"]}}
    path = write_spec(tmp_path, changed(GOOD, params=cpu))  # no fp16 on a CPU: no note of that
    assert load_spec(path, ["kernel_size=3"]).notes == ()
    assert main(["run", str(path), "--set", "kernel_size=7", "--check"]) == 0
    assert capsys.readouterr().err == "note: --set kernel_size=7: not among the values the spec searches (3, 5)\n"


def test_a_set_number_a_searched_range_would_not_draw_is_a_note(tmp_path: Path) -> None:
    """A user's ``--set n_step=6.5`` of an int searched over 2..10, and ``--set lr=0.5`` of 1e-4..1e-2: no word."""
    text = {**GOOD, "trainer": "examples.plain_loop_sweepable:train", "metric": {"name": "val_loss", "mode": "min"}}
    text["params"] = {"lr": GOOD["params"]["lr"], "width": {"type": "int", "low": 4, "high": 16}}  # a function: untyped
    path = write_spec(tmp_path, text)
    assert load_spec(path, ["lr=1e-3", "width=8"]).notes == ()  # inside, and bounds themselves are fine too
    assert load_spec(path, ["lr=1e-4", "width=16"]).notes == ()
    notes = load_spec(path, ["lr=0.5", "width=6.5"]).notes
    assert notes == (
        (
            "--set lr=0.5",
            f"outside the range the spec searches ({GOOD['params']['lr']['low']}..{GOOD['params']['lr']['high']})",
        ),
        ("--set width=6.5", "not a whole number: params.width is searched as an int"),
    )


@pytest.mark.parametrize(
    ("params", "fixed", "error"),
    [
        (  # a user's [O1, fp16, o2]: the study held three categories, fp16 twice
            {"precision": ["O1", "fp16", "o2"]},
            {},
            "params.precision.choices: 'O1' and 'fp16' are one precision (fp16): keep one, or TPE draws it twice",
        ),
        ({"precision": ["O2", "fp16-o2"]}, {}, "'O2' and 'fp16-o2' are one precision (fp16-o2)"),
        (  # passed --check, then every trial failed in run.scaler() with a ValueError naming no parameter
            {"min_loss_scale": {"choices": ["2**7", "2**8"]}},
            {},
            "params.min_loss_scale.choices[0]: run.scaler() reads it as a number, got '2**7'",
        ),
        ({}, {"init_scale": "65536x"}, "fixed.init_scale: run.scaler() reads it as a number, got '65536x'"),
        ({}, {"growth_interval": -5}, "fixed.growth_interval: must be a finite number >= 0, got -5"),
    ],
)
def test_a_function_trainers_precision_and_scaler_settings_are_checked_before_any_trial(
    tmp_path: Path, params: dict, fixed: dict, error: str
) -> None:
    data = {
        "name": "amp",
        "trainer": "tests.function_trainers:amp_train",
        "metric": {"name": "val_loss", "mode": "min"},
        "fixed": fixed,
        "params": {"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}, **params},
    }
    with pytest.raises(SpecError) as caught:
        load_spec(write_spec(tmp_path, data))
    assert error in str(caught.value)


def test_scaler_settings_that_are_numbers_pass(tmp_path: Path) -> None:
    data = {
        "name": "amp",
        "trainer": "tests.function_trainers:amp_train",
        "metric": {"name": "val_loss", "mode": "min"},
        "fixed": {"init_scale": "1e3", "growth_interval": 100},
        "params": {"precision": ["O1", "fp32"], "min_loss_scale": {"choices": [1, 128.0]}},
    }
    spec = load_spec(write_spec(tmp_path, data))
    assert spec.fixed["init_scale"] == 1000.0 and spec.params["precision"].choices == ["O1", "fp32"]


def test_one_value_under_params_is_sent_to_fixed_and_two_fractional_numbers_get_a_range_note(tmp_path: Path) -> None:
    """A user wrote ``perceptual_weight: 0.5`` (told only "must be a mapping") and ``[0.5, 2.0]`` meaning a range."""
    with pytest.raises(SpecError) as caught:
        load_spec(write_spec(tmp_path, minimal_toy_spec(params={"lr": 0.01})))
    assert "params.lr: is one value (0.01): every trial gets it from fixed:, not params:" in str(caught.value)
    spec = load_spec(write_spec(tmp_path, minimal_toy_spec(params={"lr": [0.5, 2.0], "width": [2, 4]})))
    assert spec.notes == (
        ("params.lr", "[0.5, 2.0] is two choices, not a range; for a range write {low: 0.5, high: 2.0}"),
    )


def test_whole_bounds_with_no_type_for_a_function_trainer_get_a_note_that_floats_are_drawn(tmp_path: Path) -> None:
    """A user's ``kernel_size: {low: 3, high: 7}`` drew 5.195 and every trial failed in ``nn.Conv2d``."""
    data = {
        "name": "fn",
        "trainer": "tests.function_trainers:amp_train",
        "metric": {"name": "val_loss", "mode": "min"},
        "params": {"kernel_size": {"low": 3, "high": 7}, "blocks": {"type": "int", "low": 1, "high": 3}},
    }
    note = (
        "low and high are whole numbers, but with no type a float is drawn between 3 and 7; "
        "add type: int for whole numbers, or type: float to keep floats"
    )
    assert load_spec(write_spec(tmp_path, data)).notes == (("params.kernel_size", note),)
    # a class trainer's config field says what is drawn: no note
    assert load_spec(write_spec(tmp_path, minimal_toy_spec(params={"width": {"low": 1, "high": 8}}))).notes == ()


def test_a_spec_files_stamp_tells_an_edit_from_no_change(tmp_path: Path) -> None:
    """A user edited the spec of a killed sweep and resumed it: the resume ran the old spec, saying nothing."""
    from sweeps.spec.spec_stamp import edited_since, spec_stamp

    path = tmp_path / "spec.yaml"
    path.write_text("name: s\nbudget: {epochs: 12}\n")
    stamp = spec_stamp(str(path))
    assert stamp is not None and edited_since(stamp) == ""
    path.write_text("name: s\nbudget: {epochs: 6}\n")
    assert edited_since(stamp) == str(path.resolve())
    path.unlink()
    assert edited_since(stamp) == "" and spec_stamp(str(path)) is None  # gone: nothing to compare
    assert edited_since(None) == "" and edited_since({"path": 3}) == ""  # a sweep from before the stamp


def test_one_choice_and_numbers_quoted_as_text_are_noted(tmp_path: Path) -> None:
    """A user's ``kernel_size: ["3", "5"]`` reached the loop as text (every trial failed in ``nn.Conv2d``), and
    ``kernel_size: [7]`` was counted as searched, both without a word."""
    text = {**GOOD, "trainer": "examples.plain_loop_sweepable:train", "metric": {"name": "val_loss", "mode": "min"}}
    text["params"] = {"width": {"choices": ["8", "16"]}, "lr": {"choices": [0.01]}, "act": {"choices": ["a", "1"]}}
    notes = dict(load_spec(write_spec(tmp_path, text)).notes)
    assert notes["params.width"] == (
        "choices '8', '16' are quoted: the trainer gets text, not numbers; unquote them for numbers"
    )
    assert notes["params.lr"] == "one choice (0.01): every trial gets it; a fixed value belongs under fixed:"
    assert "params.act" not in notes  # not all of them numbers: text meant
    typed = {**GOOD, "params": {"kernel_size": {"choices": ["3", "5"]}}}  # a class trainer's int field converts them
    assert "params.kernel_size" not in dict(load_spec(write_spec(tmp_path, typed)).notes)


def test_set_of_a_conditional_parameter_says_every_trial_gets_it(tmp_path: Path) -> None:
    """A user's ``--set unet_levels=2`` (drawn only for the unet) was recorded on the resnet trials, unremarked."""
    text = {**GOOD, "trainer": "examples.plain_loop_sweepable:train", "metric": {"name": "val_loss", "mode": "min"}}
    text["params"] = {
        "arch": {"choices": ["unet", "resnet"]},
        "unet_levels": {"type": "int", "low": 1, "high": 3, "when": {"arch": "unet"}},
    }
    notes = dict(load_spec(write_spec(tmp_path, text), ["unet_levels=2"]).notes)
    assert notes["--set unet_levels=2"] == (
        "params.unet_levels is drawn only when arch is unet; fixed, every trial gets it (and records it)"
    )

"""Fuzzing the command line: generated specs and arguments, valid and invalid, never show a traceback.

``sweeps run SPEC ... --check`` (in this process, through ``sweeps.cli.main``) exits 0 with one
``SPEC: ok (...)`` line, or 2 with ``error: ...``: one line, or for a spec one line per problem.
The argument parser, given any argument list for any command, parses it or exits 2 with one
line (``--help`` exits 0 with the help). Hypothesis generates the cases, with a fixed number of
examples and no example database (nothing is written to the repository); each run prints how
many cases it generated and how they ended.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sweeps import cli

EXAMPLES = int(os.environ.get("SWEEPS_FUZZ_EXAMPLES", "200"))  # per test; more for a longer search
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
OK_LINE = re.compile(r"^.+: ok \(\d+ searched parameters, \d+ trials\)$")

# --- spec documents ----------------------------------------------------------------------------

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(min_value=-3, max_value=9), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)
small_numbers = st.one_of(st.integers(min_value=-2, max_value=6), st.sampled_from(["1e-3", "0.1", "3", "x"]))
numbers = st.one_of(small_numbers, st.floats(min_value=-1.0, max_value=1.0), junk)

# Trainers only from a fixed list: a trainer is imported by name, so no generated text is.
TRAINERS = ["tests.toy_trainer:ToyTrainer", "vae", "sr_gan", "nope", "no_such_module:Thing", "json:loads", "", 3, None]
TOY_PARAMS = ["lr", "width", "mode", "behavior", "steps_per_epoch", "seed", "nope"]

valid_params = st.dictionaries(
    st.sampled_from(["lr", "width", "mode"]),
    st.sampled_from(
        [
            {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
            {"type": "int", "low": 2, "high": 8},
            {"choices": ["a", "b"]},
            {"choices": [2, 4]},
            [4, 8],
        ]
    ),
    max_size=3,
)
any_param = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["float", "int", "categorical", "bogus"]) | junk},
        optional={
            "low": numbers,
            "high": numbers,
            "log": st.booleans() | junk,
            "step": numbers,
            "when": st.dictionaries(st.sampled_from(TOY_PARAMS) | st.text(max_size=4), junk, max_size=2) | junk,
        },
    ),
    st.fixed_dictionaries({"choices": st.lists(junk | st.sampled_from(["a", "b", 1, 2]), max_size=4) | junk}),
    st.lists(st.sampled_from([1, 2, 3, "a", None]), max_size=3),
    junk,
)


def section(keys: list[str], values: st.SearchStrategy[Any] = numbers) -> st.SearchStrategy[Any]:
    """A spec section: a mapping of known (and one unknown) keys to good or bad values, or junk."""
    return st.dictionaries(st.sampled_from([*keys, "bogus"]), values, max_size=4) | junk


VALID = {
    "trainer": "tests.toy_trainer:ToyTrainer",
    "metric": "val_loss",
    "params": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
}
valid_specs = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["toy", "fuzz-1", "a.b_c"]),
        "trainer": st.just("tests.toy_trainer:ToyTrainer"),
        "metric": st.sampled_from(["val_loss", {"name": "val_loss", "mode": "min"}]),
        "budget": st.fixed_dictionaries(
            {"trials": st.integers(1, 50), "epochs": st.integers(1, 20)},
            optional={"concurrency": st.integers(1, 4)},
        ),
        "params": valid_params,
    },
    optional={"asha": st.booleans(), "seed": st.integers(0, 10**6), "fixed": st.just({"steps_per_epoch": 2})},
)
any_specs = st.fixed_dictionaries(
    {"trainer": st.sampled_from(TRAINERS)},
    optional={
        "name": st.sampled_from(["toy", "a b", "../x", "ok-1", ""]) | st.text(max_size=10) | junk,
        "metric": st.sampled_from(["val_loss", "nope", {"name": "val_loss", "mode": "sideways"}]) | junk,
        "mode": junk,
        "seed": numbers,
        "budget": section(
            ["trials", "epochs", "concurrency", "cpus_per_trial", "gpus_per_trial", "workers_per_trial", "retries"]
        ),
        "asha": st.booleans() | section(["grace_period", "reduction_factor", "max_t"]),
        "search": section(["sampler", "n_startup_trials"], st.sampled_from(["tpe", "random", "grid"]) | numbers),
        "divergence": section(["enabled", "nan", "loss_spike", "grad_norm", "window", "action"]),
        "record": section(["checkpoints", "checkpoint_max_mb", "images", "every_n_steps"]),
        "fixed": st.dictionaries(st.sampled_from(TOY_PARAMS), junk, max_size=3) | junk,
        "params": st.dictionaries(st.sampled_from(TOY_PARAMS) | st.text(max_size=5), any_param, max_size=3) | junk,
        "trial_storage": st.sampled_from(["ftp://x", "s3://", "file://rel", "", 3, None]),  # none that is written
        "unknown_key": junk,
    },
)


def dumped(document: Any) -> bytes:
    return yaml.safe_dump(document, allow_unicode=True).encode()


spec_files = st.one_of(
    valid_specs.map(dumped),
    valid_specs.map(dumped),
    any_specs.map(dumped),
    junk.map(dumped),  # a YAML scalar or list, not a mapping
    st.text(max_size=200).map(str.encode),  # any text, YAML or not
    st.binary(max_size=64),  # not UTF-8, NUL bytes
)

# --- arguments ---------------------------------------------------------------------------------

tokens = st.text(max_size=10) | st.sampled_from(["", "-", "--", "-x", "--bogus", "=", "\n", "é", "--trials=2"])
meaningful = st.one_of(
    st.tuples(st.just("--trials"), st.sampled_from(["1", "3", "0", "-1", "x", "1e3", "2.5", ""]) | tokens),
    st.tuples(
        st.just("--set"),
        st.sampled_from(
            [
                "budget.epochs=2",
                "lr=1e-3",
                "width=3",
                "mode=b",
                "nope=1",
                "=",
                "budget=",
                "budget.trials=abc",
                "budget.trials=[1",
                "params.lr.low=-1",
                "trainer=vae",
                "name=../x",
                "lr",
                "fixed={a: 1}",
                "trainer=nope",
                "trainer=vae",
                "trainer=tests.toy_trainer:ToyTrainer",
                "a\nb=1",
                "\n",
                "budget.trials=\x00",
            ]
        )
        | tokens,
    ),
    st.tuples(st.just("--name"), st.sampled_from(["ok", "../../etc/evil", "a/b", "", " x", "x" * 200]) | tokens),
    st.tuples(st.just("--cpus"), st.sampled_from(["1", "0", "-3", "two", "4"])),
    st.tuples(st.just("--storage"), st.sampled_from(["runs", "sweep_runs", "a\x00"])),  # --check makes nothing
    st.tuples(st.just("--tracking-uri"), st.sampled_from(["ftp://x", "sqlite:///m.db", "http://127.0.0.1:1"])),
    st.tuples(st.just("--address"), st.sampled_from(["local", "auto", "127.0.0.1:1", "nohost"])),
)
stray = st.tuples(st.sampled_from(["--bogus", "-x", "--check", "--trials", "--name", "--set"])) | st.tuples(tokens)
# Mostly options argparse accepts, so most cases reach the spec and the checks behind it.
run_options = st.lists(meaningful | meaningful | meaningful | stray, max_size=5).map(
    lambda pairs: [arg for pair in pairs for arg in pair]
)


def call(argv: list[str]) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_runnable(argv: list[str]) -> None:
    """What ``--check`` accepted is what would run: its trainer loads, with the spec's fixed values."""
    from sweeps.spec.sweep_spec import load_spec
    from trainables.config import build_config
    from trainables.registry import load_trainer

    args = cli._parser().parse_args(argv)
    spec = load_spec(args.spec, args.overrides, args.trials)
    build_config(load_trainer(spec.trainer).Config, dict(spec.fixed))


def check_outcome(code: int, out: str, err: str, argv: list[str]) -> str:
    """Assert the command ended as the user is promised; return how it ended."""
    assert "Traceback" not in out + err, out + err
    assert code in (0, 2), (code, out, err)
    if code == 0:
        if out.startswith("usage:"):  # -h in the generated arguments
            return "help"
        notes = err.splitlines()  # a note (budget.concurrency over this machine's CPUs) is all stderr may hold
        assert all(line.startswith("note: ") for line in notes), (out, err)
        assert OK_LINE.match(out.rstrip("\n")) and out.count("\n") == 1, (out, err)
        assert_runnable(argv)
        return "ok"
    assert out == "", out
    lines = err.rstrip("\n").split("\n")
    assert lines[0].startswith("error: ") and lines[0] != "error: ", err
    # More than one line only for a spec's problems: each further line is one, named by its file.
    assert all(line.startswith(f"{argv[1]}: ") for line in lines[1:]), err
    if lines[0].startswith("error: sweeps run: "):
        return "command line error"
    return "spec problems" if lines[0].startswith(f"error: {argv[1]}: ") else "other input error"


def test_run_check_never_shows_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "s.yaml"
    outcomes: Counter[str] = Counter()

    @SETTINGS
    @given(text=spec_files, args=run_options)
    @example(text=dumped(VALID), args=["--set", "\n"]).via("found by fuzzing: a problem's line broke in two")
    @example(text=dumped(VALID), args=["--set", "trainer=nope"]).via("found by fuzzing: --check passed it")
    @example(text=dumped(VALID), args=["--storage", "a\x00"]).via("found by fuzzing: a traceback after Ray started")
    def one_case(text: bytes, args: list[str]) -> None:
        spec.write_bytes(text)
        argv = ["run", str(spec), *args, "--check"]
        code, out, err = call(argv)
        outcomes[check_outcome(code, out, err, argv)] += 1

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    one_case()
    print(f"\nsweeps run --check: {sum(outcomes.values())} generated cases: {dict(outcomes)}")
    assert sum(outcomes.values()) >= EXAMPLES // 2
    assert outcomes["ok"] > 0 and outcomes["spec problems"] > 0  # valid and invalid specs were generated


COMMANDS = ["run", "resume", "export", "train", "report", "list", "ui"]
any_argv = st.lists(
    st.one_of(
        st.sampled_from(COMMANDS),
        st.sampled_from(
            [
                "--trials",
                "--set",
                "--name",
                "--cpus",
                "--address",
                "--storage",
                "--tracking-uri",
                "--check",
                "--force",
                "-o",
                "--output",
                "--top-k",
                "--skip-unstable",
                "--epochs",
                "--save",
                "--html",
                "--port",
                "--host",
                "-h",
                "--help",
                "--bogus",
                "3",
                "-1",
                "x",
                "spec.yaml",
            ]
        ),
        tokens,
    ),
    max_size=8,
)


def test_the_parser_answers_every_command_line_in_one_line() -> None:
    outcomes: Counter[str] = Counter()

    @SETTINGS
    @given(
        argv=any_argv
        | st.sampled_from(COMMANDS).flatmap(_with_options)
        | st.sampled_from(COMMANDS).flatmap(_with_options)
    )
    def one_case(argv: list[str]) -> None:
        out, err = StringIO(), StringIO()
        try:
            with redirect_stdout(out), redirect_stderr(err):
                cli._parser().parse_args(argv)
            outcomes["parsed"] += 1
            return
        except SystemExit as exc:
            code = exc.code
        assert "Traceback" not in out.getvalue() + err.getvalue()
        if code == 0:
            assert out.getvalue().startswith("usage:") and err.getvalue() == ""
            outcomes["help"] += 1
            return
        assert code == 2, code
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: sweeps") and out.getvalue() == "", err.getvalue()
        assert lines[0].endswith("--help' lists the options)"), lines[0]
        outcomes["error"] += 1

    one_case()
    print(f"\nsweeps argument parser: {sum(outcomes.values())} generated cases: {dict(outcomes)}")
    assert sum(outcomes.values()) >= EXAMPLES // 2
    assert outcomes["parsed"] > 0 and outcomes["error"] > 0


def _with_options(command: str) -> st.SearchStrategy[list[str]]:
    """A command, a positional argument, and generated options: more of them parse."""
    return run_options.map(lambda args: [command, "spec.yaml", *args])

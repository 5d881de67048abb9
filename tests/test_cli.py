"""The `arc-geometry` command as a user meets it, in subprocesses: signals and their exit codes, the second
signal, errors as one line without a traceback (and `--debug` with one), `--version`, the benchmark entry
points and where they write, and the dispatch of the subcommands that other modules implement.

Kept fast: a one-layer dot-product model on addition mod 11, a few steps; the benchmarks at their tiny sizes.
"""
import json
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from conftest import ROOT, subprocess_env
from arc_geometry import __version__
from arc_geometry.cli import EXTENSIONS, main
from arc_geometry.train_state import list_checkpoints, load_checkpoint, read_metrics

CFG = {"model": {"dim": 16, "depth": 1, "num_heads": 2, "geometry": "dot"},
       "data": {"p": 11, "train_frac": 0.6},
       "train": {"max_steps": 12, "batch_size": 16, "eval_every": 0, "checkpoint_every_steps": 3,
                 "checkpoint_every_s": 0, "progress": False, "num_threads": 1}}


def cli(*args, cwd=ROOT, **kw):
    return subprocess.run([sys.executable, "-m", "arc_geometry.cli", *map(str, args)], capture_output=True, text=True,
                          env=subprocess_env(), cwd=cwd, timeout=300, **kw)


def one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(CFG))
    return p


# -- signals ---------------------------------------------------------------------------------------------------
# The signals are sent by the training process to itself at chosen points (through a patched function), so the
# tests do not depend on timing: a real SIGTERM/SIGINT from outside is in test_train_resume.py.

SCRIPT = """
import os, signal, sys
import arc_geometry.train as T
from arc_geometry.cli import main
mode, sig = sys.argv[1], getattr(signal, sys.argv[2])
if mode == "during_save":            # every save sends a signal: the 1st asks to stop, the 2nd arrives mid-save
    real = T.save_checkpoint
    def save(path, t, s):
        os.kill(os.getpid(), sig)
        return real(path, t, s)
    T.save_checkpoint = save
else:                                # two signals during step 5, before any save of the stop
    real_step = T.Trainer.train_step
    def step(self):
        if self.step == 4:
            os.kill(os.getpid(), sig); os.kill(os.getpid(), sig)
        return real_step(self)
    T.Trainer.train_step = step
sys.exit(main(sys.argv[3:]))
"""


def run_script(mode, sig, *args):
    return subprocess.run([sys.executable, "-c", SCRIPT, mode, sig, *map(str, args)], capture_output=True, text=True,
                          env=subprocess_env(), cwd=ROOT, timeout=300)


def assert_complete(ckpt_dir):
    for p in list_checkpoints(ckpt_dir):
        load_checkpoint(p)                                              # raises on a torn or corrupt file
    assert not list(Path(ckpt_dir).glob("*.tmp"))


@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_second_signal_during_the_save_waits_for_it(tmp_path, cfg, sig, code):
    run = tmp_path / "run"
    r = run_script("during_save", sig, "train", cfg, "--out", run)
    assert r.returncode == code, r.stderr
    assert "waiting for the checkpoint being written to finish" in r.stderr, r.stderr
    assert f"{sig}: checkpoint" in r.stderr and "saved at step 4" in r.stderr, r.stderr
    # the 1st signal came during the periodic save after step 3; the run stopped after step 4 and saved it
    assert list_checkpoints(run / "checkpoints")[-1].name == "ckpt-00000004.safetensors"
    assert_complete(run / "checkpoints")
    assert "Traceback" not in r.stderr
    r = cli("train", "--out", run, "--resume")
    assert r.returncode == 0, r.stderr
    assert [x["step"] for x in read_metrics(run / "metrics.jsonl")] == list(range(1, 13))


def test_second_signal_before_the_save_says_none_was_written(tmp_path, cfg):
    run = tmp_path / "run"
    r = run_script("twice_in_step", "SIGINT", "train", cfg, "--out", run)
    assert r.returncode == 130, r.stderr
    assert "no checkpoint was written for this stop" in r.stderr, r.stderr
    assert "ckpt-00000003.safetensors" in r.stderr, r.stderr              # the last complete one, named
    assert list_checkpoints(run / "checkpoints")[-1].name == "ckpt-00000003.safetensors"
    assert_complete(run / "checkpoints")


# -- errors ----------------------------------------------------------------------------------------------------

def in_process(capsys, *args):
    "`main(args)` here (no interpreter start-up): `(status, stdout, stderr)`."
    try: code = main([str(a) for a in args])
    except SystemExit as e: code = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_errors_are_one_line_with_exit_2(tmp_path, cfg, capsys):
    (tmp_path / "bad.json").write_text('{"train": {"lr": 1e-3,}}')
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    (tmp_path / "file").write_text("x")
    # as a user runs it: a fresh interpreter, nothing but one line on stderr
    one_line_error(cli("train", tmp_path / "bad.json", "--out", tmp_path / "o"), str(tmp_path / "bad.json"), "line 1 column 23")
    r = cli("train", cfg, "--out", tmp_path / "o", "--set", "train.lr=.inf", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "train.lr must be a finite float" in r.stderr
    # the rest in this process
    one_line_error(in_process(capsys, "train", tmp_path / "bad.yaml", "--out", tmp_path / "o"), str(tmp_path / "bad.yaml"), "invalid YAML")
    one_line_error(in_process(capsys, "train", tmp_path, "--out", tmp_path / "o"), "is a directory")
    one_line_error(in_process(capsys, "train", cfg, "--out", tmp_path / "file"), "exists and is not a directory")
    one_line_error(in_process(capsys, "train", cfg, "--out", tmp_path / "o", "--set", "train.lr=.inf"), "train.lr must be a finite float")
    one_line_error(in_process(capsys, "train", cfg, "--out", tmp_path / "o", "--set", "train.device=cuda:7"), "train.device")
    one_line_error(in_process(capsys, "train", "--out", tmp_path / "nothing", "--resume"), "does not exist")
    one_line_error(in_process(capsys, "tune", cfg, "--trials", "0", "--out", tmp_path / "s"), "--trials", "must be >= 1")
    one_line_error(in_process(capsys, "eval", tmp_path / "nothing"), "does not exist")
    assert not (tmp_path / "o").exists() and not (tmp_path / "nothing").exists() and not (tmp_path / "s").exists()


def test_diverging_run_names_its_last_checkpoint_or_none(tmp_path, cfg, capsys):
    r = in_process(capsys, "train", cfg, "--out", tmp_path / "a", "--set", "train.lr=1e30", "--set", "train.warmup_steps=0")
    assert r.returncode == 1, r.stderr
    assert "diverged" in r.stderr and "No checkpoint was written" in r.stderr and "--resume" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_resume_refuses_fixed_keys_and_keeps_config(tmp_path, cfg, capsys):
    run = tmp_path / "run"
    assert in_process(capsys, "train", cfg, "--out", run, "--set", "train.max_steps=6").returncode == 0
    before = (run / "config.json").read_text()
    one_line_error(in_process(capsys, "train", "--out", run, "--resume", "--set", "train.lr=0.1"), "train.lr", "cannot change")
    one_line_error(in_process(capsys, "train", "--out", run, "--resume", "--set", "model.dim=32"), "model.dim", "cannot change")
    assert (run / "config.json").read_text() == before
    r = in_process(capsys, "train", "--out", run, "--resume", "--set", "train.max_steps=9")
    assert r.returncode == 0 and "resume: train.max_steps: 6 → 9" in r.stderr, r.stderr
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 9
    assert json.loads(r.stdout)["step"] == 9
    r = in_process(capsys, "train", "--out", run, "--resume")             # no arguments: the run's config, nothing to do
    assert r.returncode == 0 and json.loads(r.stdout)["step"] == 9, r.stderr


def test_model_files_have_the_umask_mode(tmp_path, cfg):
    import os
    run = tmp_path / "run"
    r = subprocess.run(["sh", "-c", f"umask 022 && exec {sys.executable} -m arc_geometry.cli train {cfg} --out {run}"],
                       capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    modes = {p.name: os.stat(p).st_mode & 0o777 for d in (run, run / "model", run / "checkpoints") for p in d.iterdir()
             if p.is_file()}
    assert set(modes.values()) == {0o644}, modes


# -- version, benchmarks, other subcommands --------------------------------------------------------------------

def test_version():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"arc-geometry {__version__}", r


TINY = json.dumps({"dim": 16, "depth": 1, "num_heads": 2, "seq_len": 8, "batch": 2, "steps": 1, "warmup": 1,
                   "vocab_size": 16, "threads": 1})


def test_bench_entry_points_write_where_told(tmp_path, capsys):
    "In-process `main` (the command line's own parsing is tested above); each case still runs in its own process."
    assert main(["bench", "model", "--geometries", "dot", "--sizes", TINY, "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.csv").read_text().startswith("geometry,")
    assert main(["bench", "attention", "--geometries", "metric", "--seqlens", "16", "--repeats", "1", "--no-reference",
                 "--out", str(tmp_path / "a.csv")]) == 0
    rows = (tmp_path / "a.csv").read_text().splitlines()
    assert rows[0].startswith("geometry,") and [x.split(",")[:4] for x in rows[1:]] == [
        ["dot", "auto", "16", "ok"], ["metric", "auto", "16", "ok"]], rows
    one_line_error(cli("bench", "kernels"), "expected `attention` or `model`")


@pytest.mark.parametrize("args, msg", [
    (["attention", "--seqlens", "0"], "--seqlens must be integers >= 1, got '0'"),
    (["attention", "--seqlens", "16,-16"], "--seqlens must be integers >= 1"),
    (["attention", "--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["attention", "--timeout", "-1"], "--timeout must be a number of seconds > 0, got -1.0"),
    (["attention", "--timeout", "nan"], "--timeout must be a number of seconds > 0"),
    (["model", "--sizes", '{"steps": 0}'], "--sizes: steps must be an int >= 1, got 0"),
    (["model", "--sizes", '{"dim": 30, "num_heads": 4}'], "dim must be divisible by num_heads"),
    (["model", "--sizes", '{"threads": 0}'], "--sizes: threads must be an int >= 1 or null, got 0"),
])
def test_bench_arguments_checked_before_any_case(tmp_path, capsys, args, msg):
    "In-process (cheap): exit 2, one line naming the argument, and nothing written."
    with pytest.raises(SystemExit) as e: main(["bench", *args, "--out", str(tmp_path / "b")])   # argparse's exit
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err, err
    assert not (tmp_path / "b").exists()


def test_bench_default_output_is_a_fresh_directory(tmp_path, monkeypatch):
    # run from a directory holding files of the old default names: they are left alone, each run gets a new directory
    import pandas as pd
    import arc_geometry.bench as ba
    import arc_geometry.bench_model as bm
    written = []
    def fake_model(path, geometries, sizes):
        df = pd.DataFrame({"geometry": geometries}); df.to_csv(path, index=False); written.append(Path(path)); return df
    monkeypatch.setattr(bm, "run_benchmark", fake_model)
    monkeypatch.setattr(ba, "bench_attention", lambda **kw: pd.DataFrame({"geometry": kw["geometries"]}))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nbs" / "bench").mkdir(parents=True)
    for old in ("nbs/bench/model_cpu.csv", "attention_bench.csv"): (tmp_path / old).write_text("committed\n")
    assert bm.main(["--geometries", "dot"]) == 0 and bm.main(["--geometries", "dot"]) == 0
    assert ba.main(["--geometries", "metric"]) == 0
    for old in ("nbs/bench/model_cpu.csv", "attention_bench.csv"): assert (tmp_path / old).read_text() == "committed\n"
    model_dirs = sorted(p for p in tmp_path.iterdir() if p.name.startswith("bench-model-"))
    assert len(model_dirs) == 2 and all((d / "model.csv").exists() for d in model_dirs), list(tmp_path.iterdir())
    assert [p.parent.name for p in written] == [d.name for d in model_dirs]
    att = [p for p in tmp_path.iterdir() if p.name.startswith("bench-attention-")]
    assert len(att) == 1 and (att[0] / "attention.csv").exists()


def test_extension_subcommands_dispatch(monkeypatch, capsys):
    got = {}
    fake_arc = types.ModuleType("arc_geometry.arc_solve")
    fake_arc.arc_main = lambda argv: got.setdefault("arc", argv) and 0
    fake = types.ModuleType("arc_geometry.study")
    fake.study_main = lambda argv: got.setdefault("study", argv) and 0
    fake_export = types.ModuleType("arc_geometry.export")
    fake_export.export_main = lambda argv: got.setdefault("export", argv) and 0
    monkeypatch.setitem(sys.modules, "arc_geometry.study", fake)
    monkeypatch.setitem(sys.modules, "arc_geometry.arc_solve", fake_arc)
    monkeypatch.setitem(sys.modules, "arc_geometry.export", fake_export)
    fake_prune = types.ModuleType("arc_geometry.prune")
    fake_prune.prune_main = lambda argv: got.setdefault("prune", argv) and 0
    monkeypatch.setitem(sys.modules, "arc_geometry.prune", fake_prune)
    assert main(["prune", "runs/x", "--ratio", "0.3", "--out", "p"]) == 0
    assert main(["arc", "cfg.yaml", "--out", "d"]) == 0
    assert main(["study", "--out", "d2"]) == 0
    assert main(["export", "runs/x", "--out", "m.onnx", "--int8"]) == 0
    assert got == {"arc": ["cfg.yaml", "--out", "d"], "study": ["--out", "d2"], "export": ["runs/x", "--out", "m.onnx", "--int8"],
                   "prune": ["runs/x", "--ratio", "0.3", "--out", "p"]}
    assert set(EXTENSIONS) == {"arc", "study", "export", "prune"}


def test_extension_subcommand_without_its_module_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "arc_geometry.export", None)        # import fails as if the module were absent
    assert main(["export", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs the module arc_geometry.export" in err, err

"""`arc-geometry study` as a user meets it, in subprocesses: a run killed (SIGKILL) after its first row resumes
without duplicating or losing trials, and bad configs are one-line errors with exit status 2."""
import contextlib
import csv
import io
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, subprocess_env

TINY = """\
model: {dim: 16, depth: 1, num_heads: 2, rank: 2}
train: {batch_size: 64, eval_every: 5}
study: {tasks: [a+b, a^2+ab+b^2], train_fractions: [0.5], geometries: [dot, metric], seeds: [0, 1], max_steps: 10, p: 11}
"""
N_TRIALS = 2 * 2 * 2


def cmd(*args):
    return [sys.executable, "-m", "arc_geometry.cli", "study", *map(str, args)]


def cli(*args):
    return subprocess.run(cmd(*args), capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=120)


def keys(out):
    with open(out / "results.csv", newline="") as f:
        return [(r["task"], r["train_fraction"], r["geometry"], r["seed"]) for r in csv.DictReader(f)]


def rows_written(path):
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def test_study_killed_resumes(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    run = tmp_path / "run"
    p = subprocess.Popen(cmd(cfg, "--out", run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=subprocess_env(), cwd=ROOT)
    try:
        t0 = time.monotonic()
        while rows_written(run / "results.csv") < 1:
            assert p.poll() is None, "the run ended before its first row was seen"
            assert time.monotonic() - t0 < 60, "no row within 60 s"
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    assert 1 <= rows_written(run / "results.csv") < N_TRIALS           # killed part-way

    again = cli(cfg, "--out", run, "--workers", "2")                   # resumed by two worker processes
    assert again.returncode == 0, again.stderr
    k = keys(run)
    assert len(k) == len(set(k)) == N_TRIALS                            # no duplicates, nothing missing
    assert set(k) == {(t, "0.5", g, str(s)) for t in ("a+b", "a^2+ab+b^2") for g in ("dot", "metric") for s in (0, 1)}
    assert f"{N_TRIALS} of the {N_TRIALS} trials" in again.stdout
    assert (run / "curves").is_dir() and len(list((run / "curves").glob("*.csv"))) == N_TRIALS


def one_line_error(r, *parts):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for s in parts: assert s in lines[0], (s, lines[0])


def test_study_bad_config(tmp_path):
    "Two through the command line (exit status, one line); the other checks in-process, as `main` reports them."
    from arc_geometry.cli import main
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: {tasks: [a+b], sedes: [0]}\n")
    one_line_error(cli(bad, "--out", tmp_path / "o"), "study.sedes")
    one_line_error(cli("--out", tmp_path / "o", "--set", "study.geometries=[flat]"), "flat")
    for text, named in (("model: {widht: 8}\n", "widht"),
                        ("train: {lrate: 0.1}\n", "train.lrate"),
                        ("studdy: {seeds: [0]}\n", "studdy"),
                        ("study: {tasks: [a%b]}\n", "a%b")):
        bad.write_text(text)
        err = io.StringIO()
        with contextlib.redirect_stderr(err): code = main(["study", str(bad), "--out", str(tmp_path / "o")])
        one_line_error(subprocess.CompletedProcess([], code, "", err.getvalue()), named)


def _children(pid):
    "Process ids of `pid`'s children (Linux /proc)."
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f: return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f: return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _started_workers(p):
    "The children of `p` once its two workers and the resource tracker run, a second later (workers busy)."
    t0 = time.monotonic()
    while len(_children(p.pid)) < 3:                       # the resource tracker and two workers
        assert p.poll() is None, "the run ended before its workers started"
        assert time.monotonic() - t0 < 60, "no workers within 60 s"
        time.sleep(0.05)
    time.sleep(1.0)                                         # workers are importing or training
    return _children(p.pid)


def test_sigkill_of_the_parent_stops_every_worker(tmp_path):
    "SIGKILL to `study --workers 2`: its workers (and the resource tracker) die with it and write nothing more."
    cfg = tmp_path / "long.yaml"
    cfg.write_text(TINY.replace("max_steps: 10", "max_steps: 100000"))
    run = tmp_path / "run"
    p = subprocess.Popen(cmd(cfg, "--out", run, "--workers", "2"), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=subprocess_env(), cwd=ROOT)
    try:
        kids = _started_workers(p)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None: p.kill()
    t0 = time.monotonic()
    while any(_alive(k) for k in kids) and time.monotonic() - t0 < 10: time.sleep(0.1)
    assert not any(_alive(k) for k in kids), [k for k in kids if _alive(k)]
    assert not (run / "curves").exists() or not list((run / "curves").iterdir())   # nothing written, not even a part


def test_sigterm_stops_the_worker_processes(tmp_path):
    "SIGTERM to `study --workers 2` ends it with status 143 and leaves no worker running; finished rows stay."
    cfg = tmp_path / "long.yaml"
    cfg.write_text(TINY.replace("max_steps: 10", "max_steps: 100000"))
    p = subprocess.Popen(cmd(cfg, "--out", tmp_path / "run", "--workers", "2"), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env=subprocess_env(), cwd=ROOT)
    try:
        kids = _started_workers(p)
        p.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        err = p.communicate(timeout=60)[1]
        assert time.monotonic() - t0 < 15, "SIGTERM took more than 15 s to stop the run"
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert "SIGTERM: stopped with 0 of the 8" in last and "run the same command again" in last, err
    t0 = time.monotonic()
    while any(_alive(k) for k in kids) and time.monotonic() - t0 < 20: time.sleep(0.1)
    assert not any(_alive(k) for k in kids), [k for k in kids if _alive(k)]

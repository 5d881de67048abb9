"""Checkpoint/resume and failure behaviour of the trainer and the CLI (arc_geometry.train, .train_state, .cli).

Resumed runs must reproduce the uninterrupted run's losses exactly on CPU, whatever interrupted them: a crash
after a checkpoint (rows logged after it are dropped from metrics.jsonl), a torn metrics line, a corrupt newest
checkpoint (reported by name, the previous one is used), a kill during a save, SIGKILL, Ctrl-C. In-process tests
use the dot-product geometry (pytest sets TRITON_INTERPRET=1, which would run other geometries interpreted);
subprocesses get the environment without it.
"""
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from conftest import ROOT, subprocess_env
from arc_geometry.train_state import list_checkpoints, read_metrics
from arc_geometry.cli import build_config, main
from arc_geometry.models import GeoLM
from arc_geometry.train import Callback, NonFiniteLossError, Trainer

torch.set_num_threads(1)

CFG = {"model": {"dim": 32, "depth": 1, "num_heads": 2, "geometry": "dot", "dropout": 0.1},
       "data": {"p": 11, "train_frac": 0.6},
       "train": {"max_steps": 24, "batch_size": 24, "lr": 3e-3, "weight_decay": 0.5, "warmup_steps": 5,
                 "eval_every": 6, "checkpoint_every_steps": 4, "checkpoint_every_s": 0, "keep_checkpoints": 3,
                 "progress": False, "grad_accum": 2, "num_threads": 1}}


class Crash(Exception):
    pass


class CrashAt(Callback):
    def __init__(self, step): self.at = step
    def on_step_end(self, tr, m):
        if m["step"] == self.at: raise Crash()


def trainer(out, cfg=CFG, callbacks=()):
    rc = build_config(cfg)
    torch.manual_seed(rc.train.seed)
    return Trainer(GeoLM(rc.model), rc.task, rc.train, out, callbacks=callbacks, run_config=rc.to_dict())


def losses(out):
    return [(r["step"], r["loss"], r.get("val_loss")) for r in read_metrics(Path(out) / "metrics.jsonl")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    trainer(out).fit()
    rows = losses(out)
    assert [r[0] for r in rows] == list(range(1, 25))
    return rows, {k: v.clone() for k, v in GeoLM.from_pretrained(out / "model").state_dict().items()}


def test_resume_is_exact_after_crash_and_torn_line(tmp_path, reference):
    with pytest.raises(Crash):
        trainer(tmp_path, callbacks=[CrashAt(14)]).fit()          # checkpoints at 4, 8, 12; rows 13-14 logged after
    with open(tmp_path / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 15, "loss": 0.12')                        # torn tail of a killed write
    assert [r[0] for r in losses(tmp_path)][-1] == 14
    trainer(tmp_path).fit(resume=True)
    assert (tmp_path / "metrics.jsonl").read_bytes().endswith(b"\n")
    assert losses(tmp_path) == reference[0]                            # bitwise equal floats, one run's rows
    final = GeoLM.from_pretrained(tmp_path / "model").state_dict()
    for k, v in reference[1].items():
        assert torch.equal(final[k], v), k


def test_corrupt_checkpoint_falls_back_by_name(tmp_path, reference):
    with pytest.raises(Crash):
        trainer(tmp_path, callbacks=[CrashAt(14)]).fit()
    newest = list_checkpoints(tmp_path / "checkpoints")[-1]
    assert newest.name == "ckpt-00000012.safetensors"
    data = bytearray(newest.read_bytes()); data[len(data) // 2] ^= 0x55; newest.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr = trainer(tmp_path)
        tr.fit(resume=True)
    assert any("ckpt-00000012.safetensors" in str(w.message) and "corrupt" in str(w.message) for w in caught)
    assert losses(tmp_path) == reference[0]


def test_kill_during_save_keeps_previous_checkpoint(tmp_path, reference, monkeypatch):
    import arc_geometry.pretrained as ck                               # the one atomic writer
    real = os.replace
    def dying_replace(src, dst):
        if str(dst).endswith("ckpt-00000012.safetensors"):
            raise Crash()                                              # "killed" after writing the temp file
        return real(src, dst)
    monkeypatch.setattr(ck.os, "replace", dying_replace)
    with pytest.raises(Crash):
        trainer(tmp_path).fit()
    monkeypatch.setattr(ck.os, "replace", real)
    names = [p.name for p in list_checkpoints(tmp_path / "checkpoints")]
    assert names[-1] == "ckpt-00000008.safetensors"
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))         # an exception removes its temporary file;
    (tmp_path / "checkpoints" / ".ckpt-00000012.safetensors.99999.tmp").write_bytes(b"half")   # a SIGKILL leaves one …
    trainer(tmp_path).fit(resume=True)                                 # … which is ignored
    assert losses(tmp_path) == reference[0]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_keeps_last_k(tmp_path, reference):
    trainer(tmp_path).fit()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == \
        [f"ckpt-{s:08d}.safetensors" for s in (16, 20, 24)]


class NaNAfter(torch.nn.Module):
    def __init__(self, m, at): super().__init__(); self.m, self.at, self.n = m, at, 0
    def forward(self, x, attention_mask=None):
        self.n += 1
        y = self.m(x)
        return y * float("nan") if self.n >= self.at else y


def test_nan_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    rc = build_config({**CFG, "train": {**CFG["train"], "eval_every": 0}})
    torch.manual_seed(0)
    tr = Trainer(NaNAfter(GeoLM(rc.model), 2 * 10 + 1), rc.task, rc.train, tmp_path)   # 2 micro-batches per step
    with pytest.raises(NonFiniteLossError, match=r"diverged.*at step 11\b.*ckpt-00000008.safetensors"):
        tr.fit()
    assert list_checkpoints(tmp_path / "checkpoints")[-1].name == "ckpt-00000008.safetensors"
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")][-1] == 10


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "arc_geometry.cli", *args], capture_output=True, text=True,
                          env=subprocess_env(), cwd=ROOT, **kw)


def test_cli_rejects_unknown_and_ill_typed_keys(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**CFG, "train": {**CFG["train"], "batchsize": 3}}))
    r = cli("train", str(cfg), "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "unknown key train.batchsize" in r.stderr, r.stderr
    assert main(["train", "--out", str(tmp_path / "b"), "--set", "train.batch_size=big"]) == 2
    assert main(["train", "--out", str(tmp_path / "b"), "--set", "model.geometry=flat"]) == 2
    r = cli("train", "--out", str(tmp_path / "b"), "--set", "model.num_heads=2.5")
    assert r.returncode == 2 and "model.num_heads must be int" in r.stderr, r.stderr
    assert not (tmp_path / "b").exists()


def _tiny_cli_config(tmp_path, steps):
    cfg = {**CFG, "train": {**CFG["train"], "max_steps": steps, "checkpoint_every_steps": 1, "eval_every": 0}}
    p = tmp_path / "c.json"; p.write_text(json.dumps(cfg))
    return p


def _wait_for_checkpoints(d, n, proc, timeout=60):
    t0 = time.time()
    while len(list_checkpoints(d)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("cliref")
    cfg = _tiny_cli_config(d, 300)
    assert cli("train", str(cfg), "--out", str(d / "ref")).returncode == 0
    return cfg, d / "ref"


SLOW = pytest.mark.skipif(os.environ.get("ARC_GEOMETRY_SLOW") != "1", reason="slow (ARC_GEOMETRY_SLOW=1): SIGINT takes "
                          "the handler SIGTERM takes, and test_cli checks its exit code and message")


@pytest.mark.parametrize("sig", [signal.SIGKILL, pytest.param(signal.SIGINT, marks=SLOW), signal.SIGTERM])
def test_cli_kill_or_ctrl_c_then_resume_matches(tmp_path, sig, cli_reference):
    cfg, ref = cli_reference
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "arc_geometry.cli", "train", str(cfg), "--out", str(run)],
                         env=subprocess_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoints(run / "checkpoints", 3, p)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    if sig in (signal.SIGINT, signal.SIGTERM):
        assert p.returncode == 128 + sig, err
        assert "saved at step" in err and "Traceback" not in err, err
        step = int(err.split("saved at step ")[1].split(";")[0])
        assert list_checkpoints(run / "checkpoints")[-1].name == f"ckpt-{step:08d}.safetensors"
    if p.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    r = cli("train", "--out", str(run), "--resume")                   # the run's own config.json
    assert r.returncode == 0, r.stderr
    assert losses(run) == losses(ref)

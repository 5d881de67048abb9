"""torchrun DDP (gloo, CPU): 2 processes with batch B follow the loss curve of 1 process with batch 2B, and a
2-process run resumes from its checkpoint onto the same curve.

Both runs see the same samples each step (rank r takes the r-th half of the global batch), DDP averages the
gradients, and rank 0 logs the all-reduced loss, so the curves agree up to float summation order.
"""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env
from arc_geometry.train_state import list_checkpoints, read_metrics

CFG = {"model": {"dim": 32, "depth": 1, "num_heads": 2, "geometry": "metric", "rank": 4},
       "data": {"p": 11, "train_frac": 0.6},
       "train": {"max_steps": 20, "batch_size": 16, "lr": 3e-3, "weight_decay": 0.5, "warmup_steps": 3,
                 "schedule": "constant", "eval_every": 5, "checkpoint_every_steps": 5, "checkpoint_every_s": 0,
                 "progress": False, "num_threads": 1}}


def run(args, nproc=1):
    pre = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 \
        else [sys.executable]
    r = subprocess.run(pre + ["-m", "arc_geometry.cli", "train", *args], capture_output=True, text=True,
                       env=subprocess_env(), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def curve(out):
    return [(r["step"], r["loss"], r.get("val_loss"), r.get("val_acc")) for r in read_metrics(out / "metrics.jsonl")]


def close(a, b, tol=2e-5):
    assert [x[0] for x in a] == [x[0] for x in b]
    for ra, rb in zip(a, b):
        for x, y in zip(ra[1:], rb[1:]):
            assert (x is None) == (y is None) and (x is None or abs(x - y) <= tol * max(1.0, abs(y))), (ra, rb)


def test_two_processes_equal_one_with_double_batch(tmp_path):
    cfg = tmp_path / "c.json"; cfg.write_text(json.dumps(CFG))
    run([str(cfg), "--out", str(tmp_path / "one"), "--set", "train.batch_size=32"])
    r = run([str(cfg), "--out", str(tmp_path / "two")], nproc=2)
    assert r.stdout.count('"stopped"') == 1                      # only rank 0 reports
    one, two = curve(tmp_path / "one"), curve(tmp_path / "two")
    assert len(one) == 20 and one[0][1] != one[-1][1]
    close(two, one)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["train"]["batch_size"] == 16
    assert (tmp_path / "two" / "model" / "config.json").exists()

    # resume under DDP: stop at 10 (constant LR, so max_steps does not change the schedule), continue to 20
    run([str(cfg), "--out", str(tmp_path / "res"), "--set", "train.max_steps=10"], nproc=2)
    assert list_checkpoints(tmp_path / "res" / "checkpoints")[-1].name == "ckpt-00000010.safetensors"
    run([str(cfg), "--out", str(tmp_path / "res"), "--resume"], nproc=2)
    close(curve(tmp_path / "res"), one)

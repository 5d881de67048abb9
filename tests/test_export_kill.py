"""`arc-geometry export` killed (SIGKILL) at several points of writing a file that exists: the old file stays
whole and loads; the next export removes what the killed ones left beside it."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, subprocess_env

pytest.importorskip("onnxruntime")
from arc_geometry.export import OnnxLM, export_onnx  # noqa: E402
from arc_geometry.models import GeoConfig, GeoLM  # noqa: E402


def tiny(seed):
    torch.manual_seed(seed)
    return GeoLM(GeoConfig(vocab_size=23, dim=16, depth=1, num_heads=2, geometry="metric", rank=2, max_seq_len=16))


# each killed process waits for its own stage: temporary directory made, exporter's file written, optimiser's file
STAGES = (lambda d: True, lambda d: (d / "export.onnx").exists(), lambda d: (d / "export.onnx.opt").exists())


def test_killed_exports_leave_the_old_file(tmp_path):
    g = tmp_path / "g.onnx"
    export_onnx(tiny(1), g)                                     # the old file
    old = g.read_bytes()
    ids = np.array([[1, 2, 3]])
    want = OnnxLM(g)(ids)
    tiny(0).save_pretrained(tmp_path / "pre")
    cmd = [sys.executable, "-m", "arc_geometry.cli", "export", str(tmp_path / "pre"), "--out", str(g)]
    procs = [subprocess.Popen(cmd, env=subprocess_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in STAGES]
    killed = []
    try:
        t0 = time.monotonic()
        while len(killed) < len(procs) and time.monotonic() - t0 < 120:
            for p, stage in zip(procs, STAGES):
                if p in killed or p.poll() is not None: continue
                dirs = [d for d in tmp_path.glob(f".g.onnx.{p.pid}.*") if d.is_dir()]
                if dirs and stage(dirs[0]):
                    os.kill(p.pid, signal.SIGKILL); killed.append(p)
            if all(p.poll() is not None for p in procs): break
            time.sleep(0.002)
    finally:
        for p in procs:
            if p.poll() is None: p.kill()
            p.wait(timeout=30)
    assert len(killed) >= 2, [p.returncode for p in procs]       # at least two were killed mid-write
    if all(p.returncode == -signal.SIGKILL for p in procs):
        assert g.read_bytes() == old                                # none reached its rename: the old file, untouched
    np.testing.assert_allclose(OnnxLM(g)(ids), want if g.read_bytes() == old else OnnxLM(g)(ids))   # and it loads
    assert list(tmp_path.glob(".g.onnx.*"))                         # the killed ones left their temporary directories
    export_onnx(tiny(1), g)                                         # the next export removes them
    assert not list(tmp_path.glob(".g.onnx.*"))
    assert g.read_bytes() == old

"""`export_onnx` killed (SIGKILL) at several points of writing a file that exists: the old file stays whole and
loads; the next export removes what the killed ones left beside it. The exports run in forked children of this
process (torch is imported once), each killed as soon as it reaches its stage."""
import os
import signal
import time

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
from arc_geometry.export import OnnxLM, export_onnx  # noqa: E402
from arc_geometry.models import GeoConfig, GeoLM  # noqa: E402


def tiny(seed):
    torch.manual_seed(seed)
    return GeoLM(GeoConfig(vocab_size=23, dim=16, depth=1, num_heads=2, geometry="dot", max_seq_len=16))   # no Triton path: the forked children never start its interpreter


# each child is killed at its own stage: temporary directory made, exporter's file written, optimiser's file written
STAGES = (lambda d: True, lambda d: (d / "export.onnx").exists(), lambda d: (d / "export.onnx.opt").exists())


def test_killed_exports_leave_the_old_file(tmp_path):
    torch.set_num_threads(1)
    g = tmp_path / "g.onnx"
    export_onnx(tiny(1), g)                                     # the old file
    old = g.read_bytes()
    ids = np.array([[1, 2, 3]])
    want = OnnxLM(g)(ids)
    new = tiny(0)
    killed = []
    for stage in STAGES:
        pid = os.fork()
        if pid == 0:                                            # the child: export over g, then leave at once
            try: export_onnx(new, g)
            finally: os._exit(0)
        t0, hit = time.monotonic(), False
        while time.monotonic() - t0 < 60:
            dirs = [d for d in tmp_path.glob(f".g.onnx.{pid}.*") if d.is_dir()]
            if dirs and stage(dirs[0]):
                os.kill(pid, signal.SIGKILL); hit = True; break
            if os.waitpid(pid, os.WNOHANG)[0]: break            # finished before its stage was seen
            time.sleep(0.001)
        if hit: os.waitpid(pid, 0)
        killed.append(hit)
        if hit: assert g.read_bytes() == old                    # killed before its rename: the old file, untouched
        np.testing.assert_allclose(OnnxLM(g)(ids), want if g.read_bytes() == old else OnnxLM(g)(ids))   # it loads
    assert sum(killed) >= 2, killed                             # at least two were killed mid-write
    if killed[-1]:   # the killed ones left their temporary directories (an export that completed after them removed them)
        assert list(tmp_path.glob(".g.onnx.*"))
    export_onnx(tiny(1), g)                                     # the next export removes them
    assert not list(tmp_path.glob(".g.onnx.*"))
    assert g.read_bytes() == old

"""The one command that checks every kernel (`python -m arc_geometry.kernels --check cuda|cpu`), end to end at tiny
sizes: here Triton's interpreter (conftest sets TRITON_INTERPRET=1 without CUDA), on a GPU the compiled kernels.
A deliberately wrong kernel must make it fail."""
import csv
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from arc_geometry import kernels
from arc_geometry.geometries import GEOMETRIES

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rows(d):
    with open(d / "check.csv") as f:
        return list(csv.DictReader(f))


def test_check_command_passes(tmp_path):
    "`python -m arc_geometry.kernels --check` on one Triton row and one SDPA row, every case, then the benchmark step."
    cmd = [sys.executable, "-m", "arc_geometry.kernels", "--check", DEVICE, "--out", str(tmp_path),
           "--geometries", "metric", "lorentz", "--dtypes", "fp16"]
    if DEVICE == "cuda": cmd.append("--no-bench")             # the benchmark itself takes minutes on a GPU
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = rows(tmp_path)
    assert len(got) == 2 * len(kernels.CHECK_CASES)
    assert {x["status"] for x in got} <= {"pass", "skip"} and any(x["status"] == "pass" for x in got)
    assert {x["geometry"] for x in got} == {"metric", "lorentz"} and {x["dtype"] for x in got} == {"fp16"}
    assert "passed, 0 failed" in r.stdout
    if DEVICE == "cpu": assert "no GPU" in r.stdout


WRONG = {"out": lambda f: (lambda *a, **kw: f(*a, **kw) * 1.001),                      # values 0.1 % off
         "dq": lambda f: (lambda q, *a, **kw: f(q, *a, **kw) + 1e-2 * (q - q.detach()).sum())}   # right values, wrong dq


@pytest.mark.parametrize("broken", list(WRONG))
def test_check_command_catches_a_wrong_kernel(tmp_path, monkeypatch, capsys, broken):
    "A Triton path with wrong values, or right values and a wrong gradient: each comparison fails, exit status 1."
    row = GEOMETRIES["poincare"]
    monkeypatch.setitem(GEOMETRIES, "poincare", dataclasses.replace(row, triton=WRONG[broken](row.triton)))
    code = kernels.main(["--check", DEVICE, "--out", str(tmp_path), "--geometries", "poincare", "--dtypes", "fp32",
                         "--cases", "causal padded Sq<Sk", "padded Sq>Sk", "--no-bench"])
    assert code == 1
    ran = rows(tmp_path)
    assert len(ran) == 2 and all(x["status"] == "FAIL" and x["worst"] == broken for x in ran), ran
    assert float(ran[0]["error"]) > float(ran[0]["tolerance"])
    assert "0 passed, 2 failed" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the compiled kernels")
def test_every_kernel_on_the_gpu(tmp_path):
    "The whole table on CUDA tensors (what `--check cuda` runs before the benchmark): no comparison fails."
    got = kernels.check("cuda", tmp_path, progress=False)
    bad = [r for r in got if r["status"] == "FAIL"]
    assert not bad, kernels.check_table(bad)

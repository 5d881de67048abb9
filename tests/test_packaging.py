"""The package as a new user installs it: `pip install .` (not editable, without requirements.txt) into a fresh virtual
environment that has only the CPU wheel of PyTorch. Every geometry must then run forward and backward on CPU without
Triton, and each optional part must fail with a message that names the extra to install.

It builds a real environment (about a minute: PyTorch's wheel is copied in), so it runs once per test session.
"""
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from conftest import ROOT
from arc_geometry.geometries import GEOMETRIES

CHECK = r'''
import json, torch, importlib, importlib.util
from arc_geometry.geometries import GEOMETRIES
from arc_geometry.models import GeoConfig, GeoLM
res = {"triton": importlib.util.find_spec("triton") is not None, "geometries": {}, "errors": {}}
for name, g in GEOMETRIES.items():
    q, k, v, p = g.example(dtype=torch.float32)
    for t in (q, k, v, *p):
        if isinstance(t, torch.Tensor): t.requires_grad_()
    out = g(q, k, v, *p, causal=True)
    out.square().sum().backward()
    model = GeoLM(GeoConfig(vocab_size=11, dim=16, depth=1, num_heads=2, geometry=name, max_seq_len=8))
    model(torch.randint(0, 11, (2, 8))).logsumexp(-1).mean().backward()
    res["geometries"][name] = bool(torch.isfinite(out).all() and torch.isfinite(q.grad).all()
                                   and all(torch.isfinite(w.grad).all() for w in model.parameters() if w.grad is not None))
for mod in ("arc_geometry.widgets", "arc_geometry.kernels"):
    try:
        importlib.import_module(mod); res["errors"][mod] = None
    except ImportError as e:
        res["errors"][mod] = str(e)
print(json.dumps(res))
'''


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    "A virtual environment with the CPU PyTorch wheel and `pip install .` of this checkout, nothing else."
    d = tmp_path_factory.mktemp("fresh")
    venv.EnvBuilder(with_pip=True).create(d / "venv")
    py = d / "venv" / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["torch==2.13.0"], check=True, timeout=900)          # the CPU wheel; never the CUDA build
    src = d / "src"                                                          # a copy: the build leaves files behind
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(src)], check=True)
    subprocess.run(["git", "-C", str(src), "checkout", "-q", "--detach"], check=True)
    for f in subprocess.run(["git", "-C", str(ROOT), "ls-files", "-m", "-o", "--exclude-standard"], capture_output=True,
                            text=True, check=True).stdout.split():            # uncommitted work travels too
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / f).is_file(): (src / f).write_bytes((ROOT / f).read_bytes())
    r = subprocess.run(pip + [str(src)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return py


def test_fresh_install_runs_every_geometry_without_triton(fresh_env):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    r = subprocess.run([str(fresh_env), "-c", CHECK], capture_output=True, text=True, timeout=600, cwd="/", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["triton"] is False                                           # not pulled in by `pip install .`
    assert res["geometries"] == {g: True for g in GEOMETRIES}                 # every registered geometry
    assert 'pip install "arc_geometry[widgets]"' in res["errors"]["arc_geometry.widgets"]
    assert 'pip install "arc_geometry[kernels]"' in res["errors"]["arc_geometry.kernels"]


def test_fresh_install_has_console_script_and_types(fresh_env):
    bin_ = fresh_env.parent
    r = subprocess.run([str(bin_ / "arc-geometry"), "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "train" in r.stdout, r.stdout + r.stderr
    site = subprocess.run([str(fresh_env), "-c", "import arc_geometry, pathlib; print(pathlib.Path(arc_geometry.__file__).parent)"],
                          capture_output=True, text=True, check=True, cwd="/").stdout.strip()
    assert (Path(site) / "py.typed").exists()
    assert "site-packages" in site                                           # installed, not this checkout

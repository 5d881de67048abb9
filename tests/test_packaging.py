"""The package as a new user installs it: `pip install .` (not editable, without requirements.txt) into a fresh virtual
environment that has only the CPU wheel of PyTorch. Every geometry must then run forward and backward on CPU without
Triton, and each optional part must fail with a message that names the extra to install.

It builds a real environment once per test session; PyTorch (and what it requires) is this environment's own copy,
made visible by links rather than unpacked again from its wheel.
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
import sys, arc_geometry.cli, arc_geometry.prune, arc_geometry.hf, arc_geometry.lora
res["hf_imported"] = sorted(m for m in ("transformers", "peft") if m in sys.modules)   # the core never imports them
for name, call in (("arc_geometry.hf", lambda: arc_geometry.hf.geometrize(None, "dot")),
                   ("arc_geometry.lora", lambda: arc_geometry.lora.lora_config(None))):
    try:
        call(); res["errors"][name] = None
    except ImportError as e:
        res["errors"][name] = str(e)
print(json.dumps(res))
'''


def link_distributions(venv_dir: Path, dest: Path, *names: str) -> list:
    """Make the distributions `names` and everything they require (their installed copies in this environment) visible
    to the virtual environment `venv_dir` without copying them: symbolic links to their top-level files and metadata
    in `dest`, which a `.pth` file puts on the environment's path. pip then sees them installed, as after
    `pip install torch` — minus the 20-odd seconds of unpacking PyTorch's wheel. Returns the distributions linked."""
    from importlib.metadata import distribution
    from packaging.requirements import Requirement
    dest.mkdir(parents=True, exist_ok=True)
    todo, seen = list(names), []
    while todo:
        dist = distribution(todo.pop())
        key = dist.metadata["Name"].lower()
        if key in seen: continue
        seen.append(key)
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {".."}:
            if not (dest / top).exists() and Path(dist.locate_file(top)).exists():
                (dest / top).symlink_to(Path(dist.locate_file(top)).resolve())
        for r in map(Requirement, dist.requires or []):
            if r.marker is None or r.marker.evaluate({"extra": ""}): todo.append(r.name)
    (site,) = (venv_dir / "lib").glob("python3*/site-packages")
    (site / "linked-distributions.pth").write_text(str(dest) + "\n")
    return seen


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    "A virtual environment with the CPU build of PyTorch and `pip install .` of this checkout, nothing else."
    d = tmp_path_factory.mktemp("fresh")
    venv.EnvBuilder(with_pip=True).create(d / "venv")
    py = d / "venv" / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    link_distributions(d / "venv", d / "linked", "torch")                   # this environment's CPU PyTorch, not copied
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
    assert res["hf_imported"] == []
    assert 'pip install "arc_geometry[hf]"' in res["errors"]["arc_geometry.hf"]
    assert 'pip install "arc_geometry[hf]"' in res["errors"]["arc_geometry.lora"]


def test_fresh_install_has_console_script_and_types(fresh_env):
    bin_ = fresh_env.parent
    r = subprocess.run([str(bin_ / "arc-geometry"), "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "train" in r.stdout, r.stdout + r.stderr
    site = subprocess.run([str(fresh_env), "-c", "import arc_geometry, pathlib; print(pathlib.Path(arc_geometry.__file__).parent)"],
                          capture_output=True, text=True, check=True, cwd="/").stdout.strip()
    assert (Path(site) / "py.typed").exists()
    assert "site-packages" in site                                           # installed, not this checkout

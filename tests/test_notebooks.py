"""Layer 2: every notebook executed top to bottom by papermill, as a reader would run it.

Each notebook runs in a kernel process of its own. By default that kernel is forked from a warm server that has
already imported PyTorch, pandas and ipykernel (`warm_kernel.py`: about 3 s of CPU saved per notebook, 54 notebooks);
`ARC_GEOMETRY_FRESH_KERNELS=1` starts a fresh `python3` kernel per notebook instead.

Sizes are made small through each notebook's `parameters` cell (the values in SMALL below). nbdev's skip
markers are honoured: cells with `#| eval: false`, cells flagged with a test flag of settings.ini
(`slow`, `notest`) and the closing `nbdev_export()` cell are blanked before execution. A failing cell
fails the test with the notebook's name, the cell's index and the error.
"""
import configparser
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import papermill as pm
import pytest

import warm_kernel
from conftest import ROOT, notebooks, subprocess_env

# Small sizes injected into a notebook's `parameters` cell; notebooks not listed run with their own values.
SMALL = {
    "index.ipynb": {"S": 16},
    "90_bench_attention.ipynb": {"QUICK": True},
    "91_bench_model.ipynb": {"QUICK": True},
    "95_bench_text.ipynb": {"QUICK": True},
    "61_explore.ipynb": {"STEPS": 20},
    "43_study.ipynb": {"STEPS": 10},
}

_cfg = configparser.ConfigParser()
_cfg.read(ROOT / "settings.ini")
SKIP_FLAGS = set(_cfg["DEFAULT"].get("tst_flags", "").split())
_DIRECTIVE = re.compile(r"^\s*#\s*\|\s*(.*)$")


def skip_reason(source: str):
    "Why nbdev would not run this cell, or None."
    if "nbdev_export(" in source:
        return "nbdev_export"
    for line in source.splitlines():
        m = _DIRECTIVE.match(line)
        if not m:
            continue
        words = m.group(1).replace(":", ": ").split()
        if words[:2] == ["eval:", "false"]:
            return "eval: false"
        if words and words[0] in SKIP_FLAGS:
            return f"flag {words[0]}"
    return None


def prepare(src: Path, dst: Path) -> int:
    "Copy notebook `src` to `dst` with nbdev-skipped cells blanked; return how many were blanked."
    nb = nbformat.read(src, as_version=4)
    n = 0
    for cell in nb.cells:
        if cell.cell_type == "code" and (why := skip_reason(cell.source)):
            cell.source = f"# skipped by tests/test_notebooks.py ({why})"
            n += 1
    nbformat.write(nb, dst)
    return n


def test_skip_reason():
    assert skip_reason("#| eval: false\nx=1") == "eval: false"
    assert skip_reason("#|eval:false\nx=1") == "eval: false"
    assert skip_reason("#| slow\nx=1") == "flag slow"
    assert skip_reason("import nbdev; nbdev.nbdev_export()") == "nbdev_export"
    assert skip_reason("#| export\nx=1") is None


@pytest.fixture(scope="session")
def kernel():
    """`(kernel name, JUPYTER_PATH)` for the notebooks of this test process: the warm kernel of `warm_kernel.py`, its
    server started here with the notebooks' environment, or a fresh `python3` where ARC_GEOMETRY_FRESH_KERNELS=1."""
    if os.environ.get("ARC_GEOMETRY_FRESH_KERNELS") == "1":
        yield "python3", os.environ.get("JUPYTER_PATH")
        return
    d = Path(tempfile.mkdtemp(prefix="arc-warm-"))     # short: a Unix socket's path has at most 107 bytes
    sock = str(d / "sock")
    server = subprocess.Popen([sys.executable, warm_kernel.__file__, "serve", sock], env=subprocess_env(), cwd=d)
    deadline = time.monotonic() + 300
    while not os.path.exists(sock):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"the warm kernel server did not start (exit status {server.poll()})", pytrace=False)
        time.sleep(0.05)
    path = os.pathsep.join(filter(None, [str(warm_kernel.kernel_spec(d, sock)), os.environ.get("JUPYTER_PATH")]))
    yield warm_kernel.NAME, path
    server.terminate()
    server.wait(timeout=60)
    shutil.rmtree(d, ignore_errors=True)


def run_notebook(nb: Path, tmp_path: Path, parameters: dict, monkeypatch, kernel) -> "nbformat.NotebookNode":
    """Execute `nb` (skipped cells blanked, `parameters` injected) in a kernel process of its own (`kernel`: the
    `kernel` fixture's name and JUPYTER_PATH); return the executed notebook."""
    src, out = tmp_path / nb.name, tmp_path / ("out_" + nb.name)
    prepare(nb, src)
    for k in list(os.environ):
        if k not in subprocess_env():
            monkeypatch.delenv(k)          # the kernel inherits this process's environment
    name, jupyter_path = kernel
    if jupyter_path:
        monkeypatch.setenv("JUPYTER_PATH", jupyter_path)
    try:
        return pm.execute_notebook(str(src), str(out), parameters=parameters, kernel_name=name, language="python",
                                   cwd=str(nb.parent), progress_bar=False, execution_timeout=900)
    except pm.PapermillExecutionError as e:
        pytest.fail(f"{nb.name}: cell {e.cell_index} (execution count {e.exec_count}) raised "
                    f"{e.ename}: {e.evalue}", pytrace=False)


def _probe(path: Path, *cells) -> Path:
    "Write a notebook of code `cells` (sources, or cells with metadata) to `path`; return `path`."
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[v4.new_code_cell(c) if isinstance(c, str) else c for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(exist_ok=True)
    nbformat.write(nb, path)
    return path


def _printed(nb) -> str:
    "Everything a run notebook printed."
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_runner_injects_parameters_and_honours_skips(tmp_path, monkeypatch, kernel):
    "The runner itself: the parameters cell is overridden, and skipped cells never run."
    params = nbformat.v4.new_code_cell("N = 1000", metadata={"tags": ["parameters"]})
    path = _probe(tmp_path / "src" / "probe.ipynb", params, "#| eval: false\nraise RuntimeError('eval: false cell ran')",
                  "#| slow\nraise RuntimeError('slow cell ran')", "import nbdev; nbdev.nbdev_export()", "print('N =', N)")
    printed = _printed(run_notebook(path, tmp_path, {"N": 3}, monkeypatch, kernel))
    assert "N = 3" in printed and "ran" not in printed


def test_each_notebook_gets_a_process_of_its_own(tmp_path, monkeypatch, kernel):
    """Kernels share nothing a notebook creates: the second notebook does not see the first one's globals, module
    attributes or environment, runs in another process, in its own directory; `arc_geometry` (whose kernels read
    TRITON_INTERPRET when they are defined) is imported by the notebook, never before; a failing cell fails the test."""
    a = _probe(tmp_path / "a" / "a.ipynb",
               "import os, sys, torch\nx = 1; torch.marker = 1; os.environ['ARC_PROBE'] = '1'",
               "assert 'arc_geometry' not in sys.modules\nprint('pid', os.getpid(), 'cwd', os.getcwd())")
    b = _probe(tmp_path / "b" / "b.ipynb", "import os, sys, torch\nassert 'x' not in globals()",
               "assert not hasattr(torch, 'marker') and 'ARC_PROBE' not in os.environ",
               "print('pid', os.getpid(), 'cwd', os.getcwd())")
    pa, pb = (_printed(run_notebook(p, tmp_path, {}, monkeypatch, kernel)).split() for p in (a, b))
    assert pa[1] != pb[1] and pa[1] != str(os.getpid())
    assert (pa[3], pb[3]) == (str(a.parent), str(b.parent))
    bad = _probe(tmp_path / "c" / "c.ipynb", "x = 1", "raise ValueError('probe failure')")
    with pytest.raises(pytest.fail.Exception, match="c.ipynb: cell 1 .*ValueError: probe failure"):
        run_notebook(bad, tmp_path, {}, monkeypatch, kernel)


@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.name)
def test_notebook_runs(nb, tmp_path, monkeypatch, kernel):
    run_notebook(nb, tmp_path, SMALL.get(nb.name, {}), monkeypatch, kernel)

"""Layer 2: every notebook executed top to bottom by papermill, as a reader would run it.

Sizes are made small through each notebook's `parameters` cell (the values in SMALL below). nbdev's skip
markers are honoured: cells with `#| eval: false`, cells flagged with a test flag of settings.ini
(`slow`, `notest`) and the closing `nbdev_export()` cell are blanked before execution. A failing cell
fails the test with the notebook's name, the cell's index and the error.
"""
import configparser
import os
import re
from pathlib import Path

import nbformat
import papermill as pm
import pytest

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


def run_notebook(nb: Path, tmp_path: Path, parameters: dict, monkeypatch) -> "nbformat.NotebookNode":
    "Execute `nb` (skipped cells blanked, `parameters` injected) in a fresh kernel; return the executed notebook."
    src, out = tmp_path / nb.name, tmp_path / ("out_" + nb.name)
    prepare(nb, src)
    for k in list(os.environ):
        if k not in subprocess_env():
            monkeypatch.delenv(k)          # the kernel inherits this process's environment
    try:
        return pm.execute_notebook(str(src), str(out), parameters=parameters, kernel_name="python3", language="python",
                                   cwd=str(nb.parent), progress_bar=False, execution_timeout=900)
    except pm.PapermillExecutionError as e:
        pytest.fail(f"{nb.name}: cell {e.cell_index} (execution count {e.exec_count}) raised "
                    f"{e.ename}: {e.evalue}", pytrace=False)


def test_runner_injects_parameters_and_honours_skips(tmp_path, monkeypatch):
    "The runner itself: the parameters cell is overridden, and skipped cells never run."
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[
        v4.new_code_cell("N = 1000", metadata={"tags": ["parameters"]}),
        v4.new_code_cell("#| eval: false\nraise RuntimeError('eval: false cell ran')"),
        v4.new_code_cell("#| slow\nraise RuntimeError('slow cell ran')"),
        v4.new_code_cell("import nbdev; nbdev.nbdev_export()"),
        v4.new_code_cell("print('N =', N)"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "src" / "probe.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    done = run_notebook(path, tmp_path, {"N": 3}, monkeypatch)
    printed = "".join(o.get("text", "") for c in done.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "N = 3" in printed and "ran" not in printed


@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.name)
def test_notebook_runs(nb, tmp_path, monkeypatch):
    run_notebook(nb, tmp_path, SMALL.get(nb.name, {}), monkeypatch)

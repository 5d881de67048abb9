"""Layer 2: every notebook executed top to bottom by papermill, as a reader would run it.

Sizes are made small through each notebook's `parameters` cell (the values in SMALL below). nbdev's skip
markers are honoured: cells with `#| eval: false`, cells flagged with a test flag of settings.ini
(`slow`, `notest`) and the closing `nbdev_export()` cell are blanked before execution. A failing cell
fails the test with the notebook's name, the cell's index and the error.
"""
import configparser
import re
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from conftest import ROOT, notebooks, subprocess_env

# Small sizes injected into a notebook's `parameters` cell; notebooks not listed run with their own values.
SMALL = {
    "10_bench_attention.ipynb": {"QUICK": True},
    "15_bench_model.ipynb": {"QUICK": True},
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


@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.name)
def test_notebook_runs(nb, tmp_path, monkeypatch):
    src = tmp_path / nb.name
    prepare(nb, src)
    for k in list(__import__("os").environ):
        if k not in subprocess_env():
            monkeypatch.delenv(k)          # the kernel inherits this process's environment
    try:
        pm.execute_notebook(str(src), str(tmp_path / ("out_" + nb.name)), parameters=SMALL.get(nb.name, {}),
                            kernel_name="python3", cwd=str(nb.parent), progress_bar=False,
                            execution_timeout=900)
    except pm.PapermillExecutionError as e:
        pytest.fail(f"{nb.name}: cell {e.cell_index} (execution count {e.exec_count}) raised "
                    f"{e.ename}: {e.evalue}", pytrace=False)

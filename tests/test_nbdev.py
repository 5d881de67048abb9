"""Layer 1: the inline test cells of every notebook, run by `nbdev_test`.

One pytest case per notebook, each in its own process (so a notebook that switches on Triton's interpreter
cannot leak that into another). Cells flagged `slow` or `notest` and `#| eval: false` cells are skipped, as
nbdev always does; run the slow ones with `nbdev_test --flags slow`.
"""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, notebooks, subprocess_env


@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.name)
def test_notebook_cells(nb):
    nbdev_test = Path(sys.executable).parent / "nbdev_test"      # the console script of this environment
    cmd = [str(nbdev_test), "--path", str(nb.relative_to(ROOT)), "--n_workers", "0"]
    r = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    out = (r.stdout + r.stderr)[-6000:]
    assert r.returncode == 0 and "Success." in r.stdout, f"nbdev_test failed on {nb.name}:\n{out}"

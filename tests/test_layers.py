"""The layers of the package: what importing a module pulls in. Saving a checkpoint, reading a results table or
exporting a model must not import the Triton kernels, the trainer or the command line."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

HEAVY = ("triton", "arc_geometry.train", "arc_geometry.cli")


@pytest.mark.parametrize("module", ["arc_geometry.train_state", "arc_geometry.runs", "arc_geometry.export",
                                    "arc_geometry.files", "arc_geometry.config"])
def test_light_modules_import_nothing_heavy(module):
    code = f"import json, sys, {module}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], f"{module} imports {out.stdout.strip()}"


def test_the_check_can_fail():
    code = f"import json, sys, arc_geometry.cli; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "arc_geometry.train" in json.loads(out.stdout.strip().splitlines()[-1])      # the CLI does import the trainer

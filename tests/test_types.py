"""Static types: the package ships `py.typed`, so its hints are a promise to users' type checkers.

Every module passes mypy in its default mode; the foundation that users call directly (input checks, manifolds, the
oracle, the registry, the public attention functions, the shared tile helpers) passes `--strict`, with one relaxation:
`--no-warn-return-any`, because PyTorch's own annotations return `Any` from many tensor operations.
"""
import subprocess
import sys

from conftest import ROOT

STRICT = ["arc_geometry/extras.py", "arc_geometry/manifolds.py", "arc_geometry/reference.py", "arc_geometry/geometries.py",
          "arc_geometry/attention.py", "arc_geometry/ops/common.py"]


def mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-incremental", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_package_passes_mypy():
    r = mypy("-p", "arc_geometry")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_public_foundation_passes_mypy_strict():
    r = mypy("--strict", "--no-warn-return-any", "--follow-imports=silent", *STRICT)   # errors of these files only
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]

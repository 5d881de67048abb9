"""Static types: the package ships `py.typed`, so its hints are a promise to users' type checkers.

Every module passes mypy in its default mode; the foundation that users call directly (input checks, manifolds, the
oracle, the registry, the public attention functions, the shared tile helpers) passes `--strict`, with one relaxation:
`--no-warn-return-any`, because PyTorch's own annotations return `Any` from many tensor operations. One mypy run
checks both (a configuration file with the strict flags for the foundation's modules): PyTorch's stubs are read once.
mypy does not follow imports into `transformers` and `peft` (`follow_imports = skip`: their names are `Any` in the
Hugging Face bridge): transformers alone is 2,467 modules, which took mypy 41 s where the whole package with PyTorch,
Optuna and the rest takes 19 s. The bridge's use of them is pinned by its notebooks' tests (51_hf, 52_lora).
"""
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

STRICT = ["arc_geometry/extras.py", "arc_geometry/manifolds.py", "arc_geometry/reference.py", "arc_geometry/geometries.py",
          "arc_geometry/attention.py", "arc_geometry/ops/common.py"]


# `--strict`'s per-module part (its global flags — unused configs, redundant casts — matter for these files alone as
# much as for any), set for the foundation's modules so that one run checks the package and the foundation together.
STRICT_FLAGS = ["disallow_any_generics", "disallow_subclassing_any", "disallow_untyped_calls", "disallow_untyped_defs",
                "disallow_incomplete_defs", "check_untyped_defs", "disallow_untyped_decorators", "warn_unused_ignores",
                "strict_equality", "extra_checks"]


NOT_FOLLOWED = ("transformers", "peft")      # see the module's docstring
STRICT_MODULES = ",".join(f.removesuffix(".py").replace("/", ".") for f in STRICT)


def config(path: Path, modules: str = STRICT_MODULES) -> Path:
    "A mypy configuration: the defaults for the package, `--strict --no-warn-return-any` for `modules`."
    path.write_text("[mypy]\nignore_missing_imports = True\nwarn_redundant_casts = True\n\n"
                    f"[mypy-{modules}]\n" + "".join(f"{f} = True\n" for f in STRICT_FLAGS)
                    + "implicit_reexport = False\nwarn_return_any = False\n\n"
                    + f"[mypy-{','.join(m + '.*' for m in NOT_FOLLOWED)}]\nfollow_imports = skip\n")
    return path


def mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_package_and_foundation_pass_mypy(tmp_path):
    r = mypy("--config-file", str(config(tmp_path / "mypy.ini")), "-p", "arc_geometry")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_strict_modules_are_checked_strictly(tmp_path):
    "The configuration can fail: an unannotated function in a strict module is an error, in another module not."
    pkg = tmp_path / "pkg"; pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "strict.py").write_text("def f(x):\n    return x\n")
    (pkg / "loose.py").write_text("def f(x):\n    return x\n")
    cfg = config(tmp_path / "mypy.ini", "pkg.strict")
    r = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--config-file", str(cfg), "-p", "pkg"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "strict.py:1: error: Function is missing a type annotation" in r.stdout, r.stdout
    assert "loose.py" not in r.stdout, r.stdout

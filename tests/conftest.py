"""pytest set-up shared by every test in tests/.

Triton reads TRITON_INTERPRET when a kernel's decorator runs, that is when `arc_geometry.geometries` imports the
kernel modules, so the variable must be set before anything imports arc_geometry: here, once for the whole session
(on a machine without CUDA), so that the kernel tests can run Triton's interpreter on CPU tensors. Every test names
the path it checks (a registry row's `torch` / `triton` / `reference`, or `backend=`); none relies on what
`backend="auto"` resolves to, which is what differs between this process and a notebook's.
The notebook runner starts fresh kernels without this variable: notebooks that test kernels set it themselves.
"""
import os
from pathlib import Path

# One thread per process: the suite runs as many test processes as the machine has cores (`pytest -n`), and each
# starts notebooks and command-line subprocesses that inherit this; PyTorch's default (a thread per core in every
# process) oversubscribes the cores, and idle OpenMP threads spin.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")       # FlexAttention's compile: no pool of compile workers
import torch  # noqa: E402  (after OMP_NUM_THREADS: it is read when PyTorch starts its thread pool)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"


def notebooks():
    "Every notebook of the library, in reading order (nbs/*.ipynb, checkpoints and _proc excluded)."
    return sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith((".", "_")))


def subprocess_env():
    "The environment for notebook subprocesses: this one without TRITON_INTERPRET (notebooks set it themselves)."
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


# The longest tests first (measured on two cores): a long one left for the end of the run keeps one core idle.
LONG_FIRST = ("test_notebook_runs[16_flash", "test_docs.py::", "test_notebook_runs[50_export", "test_train_ddp.py::",
              "test_types.py::", "test_study_killed", "test_bench_entry_points", "test_notebook_runs[21_model",
              "test_notebook_runs[43_study", "test_notebook_runs[41_arc", "test_notebook_runs[38_grid",
              "test_notebook_runs[17_position", "test_fresh_install", "test_cli_kill_or_ctrl_c_then_resume",
              "test_notebook_runs[90_bench", "test_notebook_runs[18_kernels", "test_notebook_runs[60_widgets",
              "test_arc.py::test_kill", "test_two_processes_on_postgres")


def pytest_configure(config):
    """With `-n`, xdist's `worksteal` rather than its default `load`: `load` hands each worker a contiguous block of the
    sorted tests up front (all of `LONG_FIRST` went to one worker, which then ran 86 s alone at the end); with
    work stealing an idle worker takes tests still queued on the other."""
    if getattr(config.option, "dist", None) == "load":
        config.option.dist = "worksteal"


def pytest_collection_modifyitems(items):
    "Run the `LONG_FIRST` tests first (in that order), the others in their usual order after them."
    rank = lambda it: next((i for i, p in enumerate(LONG_FIRST) if p in it.nodeid), len(LONG_FIRST))
    items.sort(key=rank)

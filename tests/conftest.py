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

import torch

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

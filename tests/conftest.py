"""pytest set-up shared by every test in tests/.

Triton reads TRITON_INTERPRET when a kernel's decorator runs, so it must be set before anything imports
arc_geometry. On a machine without CUDA, tests here run the Triton kernels in Triton's interpreter on CPU
tensors (`backend="auto"` resolves to "triton"); tests that want the PyTorch CPU path ask for it by name.
The notebook runners start fresh processes without this variable: notebooks that test kernels set it
themselves, so the others keep the fast CPU path.
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

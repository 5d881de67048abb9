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


def _imports(root):
    "Module → package modules it imports (module level and inside functions; `if TYPE_CHECKING:` blocks left out)."
    import ast
    pkg = root / "arc_geometry"
    mods = {}
    for p in sorted(pkg.rglob("*.py")):
        if p.name == "_modidx.py": continue
        name = ".".join(p.relative_to(root).with_suffix("").parts)
        mods[name[:-9] if name.endswith(".__init__") else name] = p
    edges = {m: set() for m in mods}
    for m, p in mods.items():
        tree = ast.parse(p.read_text())
        skip = {id(x) for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
                for s in n.body for x in ast.walk(s)}
        here = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if id(node) in skip: continue
            if isinstance(node, ast.ImportFrom):
                base = here.split(".")[: len(here.split(".")) - node.level + 1] if node.level else []
                tgt = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
                cands = [tgt] + [f"{tgt}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import): cands = [a.name for a in node.names]
            else: continue
            edges[m] |= {c for c in cands if c in mods and c != m}
    return edges


def _cycles(edges):
    "The strongly connected components of more than one module (Tarjan)."
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in edges[v]:
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop(); on.discard(w); comp.add(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    for v in edges:
        if v not in index: visit(v)
    return out


def test_no_import_cycle():
    edges = _imports(ROOT)
    assert len(edges) > 40 and "arc_geometry.files" in edges["arc_geometry.pretrained"]   # the walk sees the package
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []

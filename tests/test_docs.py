"""The local docs build (tests/build_docs.py) produces a page per notebook and a navigation that links them."""
import re

from build_docs import build
from conftest import ROOT, notebooks


def test_docs_build():
    readme_before = (ROOT / "README.md").read_text()
    pages = build("_docs")
    assert (ROOT / "README.md").read_text() == readme_before, \
        "README.md is stale: run `python tests/build_docs.py` and commit README.md"
    names = {p.name for p in pages}
    expected = {("index" if nb.stem == "index" else nb.stem) + ".html" for nb in notebooks()}
    assert names == expected, (names ^ expected)
    index = (pages[0].parent / "index.html").read_text()
    for name in expected:                         # every page reachable from the home page
        assert f'href="{name}"' in index, name
    for p in pages:
        text = p.read_text()
        assert "<nav class=\"ag-nav\">" in text and len(text) > 2000, p.name
        assert "#| export" not in text and "nbdev_export()" not in text, f"{p.name}: nbdev directives leaked"
    assert (pages[0].parent / "mathjax" / "MathJax.js").exists(), "MathJax is not shipped: formulas would not render offline"
    core = (pages[0].parent / "00_core.html").read_text()
    assert re.search(r"check_shape", core)       # the API reference (show_doc) is rendered

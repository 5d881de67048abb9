"""The local docs build (`python -m arc_geometry.docs`): a page per notebook and a navigation that links them; and a real
browser that opens the rendered widgets page and finds every plotly figure drawn, with no console errors.

The browser tests need Debian's Chromium (`apt-get install chromium`; `.ci/run` installs it). Without it they are
skipped with that instruction, except where `ARC_GEOMETRY_REQUIRE_BROWSER=1` (set by `.ci/run`): there a missing
browser fails. The tests of this file share one docs build, also across
pytest-xdist workers: a lock serialises the build and a stamp tells the other workers it is done.
"""
import fcntl
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from arc_geometry.docs import build
from conftest import ROOT, notebooks

WIDGETS_PAGE = "61_explore.html"
DOCS = ROOT / "_docs"
SHOTS = DOCS / "screenshots"


@pytest.fixture(scope="module")
def site():
    "Build the docs once per test run: `(pages, README changed by the build)`."
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")            # shared by the workers of one xdist run
    stamp = DOCS / ".built-by.json"
    with open(Path(tempfile.gettempdir()) / "arc_geometry_docs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if run and stamp.exists() and json.loads(stamp.read_text())["run"] == run:
            readme_changed = json.loads(stamp.read_text())["readme_changed"]
            pages = [DOCS / "index.html"] + sorted(p for p in DOCS.glob("*.html") if p.name != "index.html")
        else:
            before = (ROOT / "README.md").read_text()
            pages = build("_docs", ROOT)
            readme_changed = (ROOT / "README.md").read_text() != before
            stamp.write_text(json.dumps({"run": run, "readme_changed": readme_changed}))
    return pages, readme_changed


def test_docs_build(site):
    pages, readme_changed = site
    assert not readme_changed, \
        "README.md is stale: run `python -m arc_geometry.docs` and commit README.md"
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
        assert not re.search(r'<(script|link)[^>]+(src|href)="https?://', text), f"{p.name} loads from the network"
    assert (pages[0].parent / "mathjax" / "MathJax.js").exists(), "MathJax is not shipped: formulas would not render offline"
    core = (pages[0].parent / "00_core.html").read_text()
    assert re.search(r"check_shape", core)       # the API reference (show_doc) is rendered


def chromium() -> str:
    "The Chromium executable, or skip (fail where ARC_GEOMETRY_REQUIRE_BROWSER=1) with how to install it."
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path: return path
    msg = "no Chromium on PATH: install Debian's chromium (apt-get install chromium) to run the browser tests"
    if os.environ.get("ARC_GEOMETRY_REQUIRE_BROWSER") == "1": pytest.fail(msg)
    pytest.skip(msg)


def drawn(png_bytes: bytes) -> tuple[int, float]:
    "Distinct colours and the fraction of non-white pixels of a PNG: a blank image has 1 colour and 0 ink."
    import io
    from PIL import Image
    im = Image.open(io.BytesIO(png_bytes)).convert("RGB")
    im.thumbnail((800, 800))
    px = list(im.get_flattened_data()) if hasattr(im, "get_flattened_data") else list(im.getdata())
    return len(set(px)), sum(p != (255, 255, 255) for p in px) / len(px)


# Headless Chromium as root on a machine without network.
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def test_widgets_page_in_browser(site):
    exe = chromium()
    from playwright.sync_api import sync_playwright
    page_path = DOCS / WIDGETS_PAGE
    assert page_path.exists(), f"{page_path} was not built"
    n_figs = page_path.read_text().count("Plotly.newPlot(")
    assert n_figs >= 4, f"{WIDGETS_PAGE}: expected the widgets' figures in the page, found {n_figs}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.goto(page_path.as_uri(), wait_until="load")
            page.wait_for_function(f"document.querySelectorAll('.plotly-graph-div .main-svg').length >= {n_figs}",
                                   timeout=30_000)
            figs = page.query_selector_all(".plotly-graph-div")
            assert len(figs) == n_figs, (len(figs), n_figs)
            for i, f in enumerate(figs):                # every figure drew something: axes, traces, colour
                f.scroll_into_view_if_needed()
                colours, ink = drawn(f.screenshot())
                assert colours > 20 and ink > 0.02, f"figure {i} of {WIDGETS_PAGE} looks blank ({colours} colours, {ink:.1%} ink)"
                assert f.query_selector(".cartesianlayer .trace, .hm, .heatmaplayer image, .barlayer .trace"), \
                    f"figure {i}: plotly drew no trace"
            shot = page.screenshot(path=str(SHOTS / "61_explore.png"), full_page=True)
            colours, ink = drawn(shot)
            assert colours > 100 and ink > 0.05, f"the page screenshot looks blank ({colours} colours, {ink:.1%} ink)"
            assert not errors, "\n".join(errors)
        finally:
            browser.close()


def test_png_export(tmp_path):
    "A widget's `save_png` (kaleido + Chromium) writes a picture with the figure in it."
    chromium()
    import torch
    from arc_geometry.models import GeoConfig, GeoLM
    from arc_geometry.widgets import AttentionExplorer
    torch.manual_seed(0)
    m = GeoLM(GeoConfig(vocab_size=7, dim=16, depth=1, num_heads=2, geometry="poincare", max_seq_len=8))
    path = AttentionExplorer(m, torch.arange(6)).save_png(tmp_path / "attention.png", scale=1)
    colours, ink = drawn(path.read_bytes())
    assert colours > 20 and ink > 0.02, (colours, ink)

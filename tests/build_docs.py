"""Build the documentation as browsable HTML in `_docs/`, without Quarto.

    python tests/build_docs.py            # writes _docs/index.html, one page per notebook, and README.md

The published site is rendered by Quarto (`nbdev_docs`, in the GitHub docs workflow). Quarto cannot be
installed on machines without GitHub access, so this fallback uses nbdev's own processing of the
notebooks (`nbdev.serve.proc_nbs`: hidden cells dropped, `show_doc` signatures rendered, directives
stripped, into `_proc/`) and nbconvert to turn each processed notebook into an HTML page, with a
navigation bar that links every page in reading order.
"""
import html
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_NAV_CSS = """
<style>
 nav.ag-nav{position:sticky;top:0;z-index:10;background:#2c3e50;padding:.5em 1em;font:14px sans-serif}
 nav.ag-nav a{color:#ecf0f1;margin-right:1.1em;text-decoration:none} nav.ag-nav a.here{font-weight:bold;text-decoration:underline}
 .ag-desc{color:#555;font-style:italic;margin:0 0 1em 0}
</style>"""


def _frontmatter(nb) -> dict:
    "Title and description from the raw frontmatter cell nbdev's processing writes."
    for cell in nb.cells:
        if cell.cell_type == "raw" and cell.source.startswith("---"):
            import yaml
            meta = yaml.safe_load(cell.source.strip().strip("-")) or {}
            return {k: str(v) for k, v in meta.items()}
    return {}


_DIRECTIVE = re.compile(r"^\s*#\s*\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")
_QUARTO_ATTRS = re.compile(r"\{(?:target|style|\.)[^{}]*\}")     # Quarto-only `[text](url){target=...}` attributes


def quarto_to_nbconvert(nb) -> None:
    "Apply what Quarto would do with nbdev's cell directives: `echo: false` hides the code, directives vanish."
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines = cell.source.splitlines()
        directives = {m.group(1): m.group(2) for m in map(_DIRECTIVE.match, lines) if m}
        cell.source = "\n".join(l for l in lines if not _DIRECTIVE.match(l)).strip()
        if directives.get("echo") == "false" or not cell.source:
            cell.metadata.setdefault("tags", []).append("remove_input")
        for out in cell.get("outputs", []):
            md = out.get("data", {}).get("text/markdown")
            if md is not None:
                out["data"]["text/markdown"] = _QUARTO_ATTRS.sub("", md if isinstance(md, str) else "".join(md))
            fig = out.get("data", {}).pop(PLOTLY_MIME, None)
            if fig is not None:
                out["data"] = {"text/html": plotly_html(fig)}


PLOTLY_MIME = "application/vnd.plotly.v1+json"


def plotly_html(fig: dict) -> str:
    "A plotly figure (the notebook's mimetype output) as a div drawn by the plotly.js shipped next to the pages."
    import json
    import uuid

    uid = "plotly-" + uuid.uuid4().hex[:12]
    height = (fig.get("layout") or {}).get("height") or 450
    spec = json.dumps({"data": fig.get("data", []), "layout": fig.get("layout", {})})
    return (f'<div id="{uid}" class="plotly-graph-div" style="height:{height}px;width:100%"></div>'
            f'<script>(function(){{var f={spec};Plotly.newPlot("{uid}",f.data,f.layout,{{responsive:true}});}})();</script>')


def _plotlyjs(dest: Path) -> str:
    "Copy plotly.js (from the plotly package) next to the pages: figures draw offline, with no CDN."
    import plotly

    src = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    shutil.copy2(src, dest / "plotly.min.js")
    return '<script src="plotly.min.js" charset="utf-8"></script>'


def _mathjax(dest: Path) -> str:
    "Copy MathJax (from the jupyter-server-mathjax package) next to the pages; return the URL to load it by."
    try:
        import jupyter_server_mathjax
    except ImportError:                          # no local MathJax: formulas stay as TeX source
        return ""
    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    shutil.copytree(static, dest / "mathjax", ignore=shutil.ignore_patterns("*.md", "unpacked", "docs", "test"))
    return "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"


_REMOTE_SCRIPT = re.compile(r'<script[^>]*\bsrc="https?://[^"]*"[^>]*>\s*</script>\s*')
# jupyter-server-mathjax ships only the STIX-Web fonts: tell MathJax 2 to use them (its default, TeX, is not there).
_MATHJAX_FONTS = ('<script type="text/x-mathjax-config">MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], '
                  'preferredFont: null, webFont: "STIX-Web", imageFont: null}});</script>')


def offline(body: str) -> str:
    """Drop the scripts nbconvert's template loads from CDNs (require.js, the widget embedder): the pages work
    without them (figures are drawn by the local plotly.js; widgets show their static figure), and offline they
    only fail to load. Point MathJax at the fonts that are shipped."""
    return _REMOTE_SCRIPT.sub("", body).replace("</head>", _MATHJAX_FONTS + "</head>", 1)


def build(out: str = "_docs") -> list:
    "Process every notebook with nbdev, render each to `out/<name>.html`; return the pages written."
    import nbformat
    from nbconvert import HTMLExporter
    from nbdev.config import get_config
    from nbdev.serve import proc_nbs

    cfg = get_config(path=ROOT)
    cache = proc_nbs(str(cfg.nbs_path), n_workers=0, force=True)
    notebooks = sorted(cache.glob("*.ipynb"), key=lambda p: (p.stem != "index", p.name))
    if not notebooks:
        raise RuntimeError(f"nbdev processed no notebooks into {cache}")
    dest = ROOT / out
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)

    pages = []
    for p in notebooks:
        nb = nbformat.read(p, as_version=4)
        fm = _frontmatter(nb)
        nb.cells = [c for c in nb.cells if not (c.cell_type == "raw" and c.source.startswith("---"))]
        quarto_to_nbconvert(nb)
        nb.metadata.pop("widgets", None)         # no saved widget state: widgets show their static text/html
        title = fm.get("title") or p.stem
        if fm.get("description"):
            nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"# {title}\n\n<p class='ag-desc'>{fm['description']}</p>"))
        name = "index.html" if p.stem == "index" else p.stem + ".html"
        pages.append((name, title, nb))

    from nbconvert.preprocessors import TagRemovePreprocessor
    exporter = HTMLExporter(template_name="lab", exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"remove_input"}), enabled=True)
    plotly_tag = _plotlyjs(dest)
    if url := _mathjax(dest):
        exporter.mathjax_url = url
    for name, title, nb in pages:
        links = " ".join(f'<a href="{n}"{" class=here" if n == name else ""}>{html.escape(t)}</a>'
                         for n, t, _ in pages)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
        body = offline(body)
        body = body.replace("</head>", _NAV_CSS + (plotly_tag if "Plotly.newPlot" in body else "") + "</head>", 1)
        body = re.sub(r"(<body[^>]*>)", r'\1<nav class="ag-nav">' + links.replace("\\", "\\\\") + "</nav>", body, count=1)
        (dest / name).write_text(body, encoding="utf-8")
    write_readme(cache / "index.ipynb")
    for extra in (cfg.nbs_path / "bench",):          # data the pages link to (benchmark CSVs, figures)
        if extra.is_dir():
            shutil.copytree(extra, dest / extra.name)
    return [dest / n for n, _, _ in pages]


def readme_text(processed_index: Path) -> str:
    "README.md from nbdev's processed `index.ipynb`: the docs home page as GitHub markdown."
    import nbformat
    from nbconvert import MarkdownExporter

    nb = nbformat.read(processed_index, as_version=4)
    fm = _frontmatter(nb)
    nb.cells = [c for c in nb.cells if not (c.cell_type == "raw" and c.source.startswith("---"))]
    body, _ = MarkdownExporter().from_notebook_node(nb)
    head = f"# {fm.get('title', 'arc_geometry')}\n\n> {fm.get('description', '')}\n\n"
    note = "<!-- generated from nbs/index.ipynb by tests/build_docs.py: edit the notebook, not this file -->\n\n"
    return note + head + re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"


def write_readme(processed_index: Path) -> Path:
    "Write README.md (the docs home page, from `index.ipynb`)."
    (ROOT / "README.md").write_text(readme_text(processed_index), encoding="utf-8")
    return ROOT / "README.md"


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "_docs"
    pages = build(out)
    print(f"wrote {len(pages)} pages to {ROOT / out}: " + ", ".join(p.name for p in pages))

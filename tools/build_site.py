#!/usr/bin/env python
"""Build the course as an offline static website, without Quarto.

    python tools/build_site.py [--out _site] [--no-execute] [--slow] [--only NAME ...] [--timeout 1800]

Every notebook of nbs/ becomes one HTML page (`index.html` for index.ipynb), in the course order of
`COURSE_ORDER`, with a sidebar, previous/next links and embedded CSS. As in nbdev's docs, `#| hide`,
`#| exporti` and `#| default_exp` cells are removed, and `#| export` cells are shown as the signatures and
docstrings of what they define, their source collapsed. Maths (`$...$`, `$$...$$`) is converted to MathML
when the site is built, so pages need neither JavaScript nor a network. Figures are written as image files
beside the pages.

With execution (the default) each notebook runs in a fresh Jupyter kernel (nbclient), in nbs/, skipping
cells marked `#| eval: false`, `#| slow` (unless --slow) and the `nbdev_export()` cell, within --timeout
seconds per notebook. A failing cell is shown on its page and makes the build exit 1, naming the notebook
and the cell; so does a page check that fails (raw `$` left in the text, a missing image, a broken link).
"""
import argparse
import ast
import base64
import fnmatch
import html
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import latex2mathml.converter
import nbformat
from markdown_it import MarkdownIt
from mdit_py_plugins.dollarmath import dollarmath_plugin
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

# Notebooks are matched by file name (without .ipynb) in this order; the others follow by name.
COURSE_ORDER = ["index", "course", *[f"{i:02d}*" for i in range(12)], "20*", "21*"]
CELL_TIMEOUT_S = 600          # one cell at most: a widget cell can miss its kernel's reply under nbclient and hang
HIDDEN = {"hide", "exporti", "default_exp"}  # directives whose cells nbdev removes from its docs
WIDGET = "application/vnd.jupyter.widget-view+json"
MAX_LINES = 200  # longest text output shown
PROGRESS = re.compile(r"\d+%\||\bit/s\]|s/it\]")  # a tqdm progress bar

# ---------------------------------------------------------------------------------------------- reading

def course_order(nbs: Path) -> list:
    "The notebooks of `nbs` (not those starting with `_`), in course order."
    def rank(p): return next((i for i, pat in enumerate(COURSE_ORDER) if fnmatch.fnmatch(p.stem, pat)), 99)
    return sorted((p for p in nbs.glob("*.ipynb") if not p.name.startswith("_")), key=lambda p: (rank(p), p.name))

def directives(src: str) -> dict:
    "nbdev directives at the top of a cell: `#| eval: false` -> {'eval': 'false'}, `#| export` -> {'export': ''}."
    found = {}
    for line in src.splitlines():
        if not line.strip(): continue
        m = re.match(r"#\|\s*([\w-]+):?\s*(.*?)\s*$", line)
        if not m: break
        found[m[1]] = m[2]
    return found

def strip_directives(src: str) -> str:
    return "\n".join(ln for ln in src.splitlines() if not ln.lstrip().startswith("#|")).strip("\n")

def skip_reason(cell, slow: bool):
    "Why a code cell is not run in this build, or None if it runs."
    d = directives(cell.source)
    if d.get("eval", "").lower() == "false": return "eval: false"
    if "slow" in d and not slow: return "slow (run with --slow)"
    if "nbdev_export(" in cell.source: return "nbdev_export"
    return None

def page_title(path: Path) -> str:
    "The notebook's first `# Title`, prefixed with its number (`02d`), for the sidebar and <title>."
    cells = json.loads(path.read_text()).get("cells", [])
    texts = ("".join(c.get("source", "")) for c in cells if c.get("cell_type") == "markdown")
    m = next((m for t in texts if (m := re.search(r"^#\s+(.+)$", t, re.M))), None)
    title = re.sub(r"[`*_]", "", m[1]).strip() if m else path.stem
    num = re.match(r"(\d+[a-z]?)_", path.stem)
    return f"{num[1]} · {title}" if num else title

# --------------------------------------------------------------------------------------------- executing

def execute(nb, cwd: Path, slow: bool, timeout_s: float):
    "Run `nb`'s code cells in place in a fresh kernel; return (cell index, message) of the first failure, or None."
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError
    client = NotebookClient(nb, kernel_name="python3", coalesce_streams=True, resources={"metadata": {"path": str(cwd)}})
    env = {**os.environ, "MPLBACKEND": "module://matplotlib_inline.backend_inline"}  # figures as PNG outputs
    deadline = time.monotonic() + timeout_s
    with client.setup_kernel(env=env, stderr=subprocess.DEVNULL):  # the kernel's own log, not the notebook's
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or skip_reason(cell, slow): continue
            client.timeout = max(1, int(min(deadline - time.monotonic(), CELL_TIMEOUT_S)))
            try: client.execute_cell(cell, i)
            except CellTimeoutError:
                msg = (f"TimeoutError: a cell ran past {CELL_TIMEOUT_S} s, or the notebook past its {timeout_s:.0f} s "
                       "(--timeout)")
                cell.outputs.append(nbformat.v4.new_output("error", ename="TimeoutError", evalue=msg, traceback=[msg]))
                return i, msg
            except CellExecutionError as e:
                return i, f"{e.ename}: {e.evalue}"
    return None

# ------------------------------------------------------------------------------------------- rendering

def to_mathml(latex: str, opts: dict) -> str:
    "LaTeX -> MathML (rendered by the browser itself, no JavaScript); raises ValueError naming the LaTeX."
    try: mathml = latex2mathml.converter.convert(latex.strip(), display="block" if opts.get("display_mode") else "inline")
    except Exception as e: raise ValueError(f"cannot convert the maths {latex!r} to MathML: {e}") from e
    return mathml.replace('mathvariant="bold"', 'style="font-weight:bold;font-style:normal"')  # MathML Core has no bold

MD = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
MD.use(dollarmath_plugin, double_inline=True, renderer=to_mathml)

def markdown(src: str) -> str:
    "Markdown with maths -> HTML; links to notebooks point to their pages."
    return re.sub(r'href="([^":#]+)\.ipynb(#[^"]*)?"', r'href="\1.html\2"', MD.render(src))

def code(src: str) -> str:
    return f'<pre class="hl">{highlight(src, PythonLexer(), HtmlFormatter(nowrap=True))}</pre>'

def clean_text(text: str, stderr=False) -> str:
    "Terminal text as a page shows it: colours removed, `\\r` rewrites applied, progress bars dropped from stderr."
    lines = [ln.split("\r")[-1] for ln in re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).split("\n")]
    if stderr: lines = [ln for ln in lines if not PROGRESS.search(ln)]
    if len(lines) > MAX_LINES: lines = lines[:MAX_LINES] + [f"... ({len(lines) - MAX_LINES} more lines)"]
    return "\n".join(lines).strip("\n")

@dataclass
class Page:
    "What rendering one notebook needs and finds."
    stem: str
    out: Path
    nbs: Path
    errors: list = field(default_factory=list)  # (cell index, message)
    n_images: int = 0

    def image(self, b64: str, ext: str) -> str:
        "Write an image output beside the pages; return its <img>."
        self.n_images += 1
        name = f"img/{self.stem}-{self.n_images}.{ext}"
        data = b64.encode() if ext == "svg" else base64.b64decode(b64)
        (self.out / name).write_bytes(data)
        return f'<img src="{name}" alt="figure {self.n_images} of {self.stem}">'

    def copy_local_images(self, text: str) -> str:
        "Copy the files of nbs/ that markdown `<img>`s refer to (relative paths) into the site."
        for src in re.findall(r'<img src="([^":]+?)"', text):
            if ".." not in src and (self.nbs / src).is_file():
                (self.out / src).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.nbs / src, self.out / src)
        return text

def render_output(out, page: Page) -> str:
    "One cell output as HTML, richest form first; widgets become a note."
    kind = out.output_type
    if kind == "stream":
        text = clean_text(out.text, stderr=out.name == "stderr")
        return f'<pre class="output {out.name}">{html.escape(text)}</pre>' if text else ""
    if kind == "error":
        return f'<pre class="output error">{html.escape(clean_text(chr(10).join(out.traceback)))}</pre>'
    data = out.get("data", {})
    if WIDGET in data and PROGRESS.search(data.get("text/plain", "")): return ""  # tqdm.notebook's bar
    if WIDGET in data:
        return (f'<p class="output widget">Interactive widget: it needs a live Jupyter kernel. Open '
                f'<code>nbs/{page.stem}.ipynb</code> in JupyterLab to use it.</p>')
    for mime, ext in (("image/png", "png"), ("image/jpeg", "jpg"), ("image/svg+xml", "svg")):
        if mime in data: return f'<div class="output figure">{page.image(data[mime], ext)}</div>'
    if "text/html" in data: return f'<div class="output html">{data["text/html"]}</div>'
    if "text/markdown" in data: return f'<div class="output markdown">{markdown(data["text/markdown"])}</div>'
    if "text/latex" in data: return f'<div class="output">{markdown(data["text/latex"])}</div>'
    if "text/plain" in data: return f'<pre class="output">{html.escape(clean_text(data["text/plain"]))}</pre>'
    return ""

def api_items(src: str):
    "(signature, docstring) of each public function, class, method and constant a cell defines."
    lines, tree = src.splitlines(), ast.parse(src)
    def header(node):
        start = min([d.lineno for d in node.decorator_list] + [node.lineno])
        end = max(node.lineno, node.body[0].lineno - 1)
        fields = [ln for s in node.body if isinstance(s, ast.AnnAssign) for ln in lines[s.lineno - 1:s.end_lineno]]
        return textwrap.dedent("\n".join(lines[start - 1:end] + (fields if isinstance(node, ast.ClassDef) else [])))
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for node in tree.body:
        if isinstance(node, defs) and not node.name.startswith("_"):
            yield header(node), ast.get_docstring(node)
            for sub in node.body if isinstance(node, ast.ClassDef) else []:
                if isinstance(sub, defs[:2]) and (not sub.name.startswith("_") or sub.name in ("__init__", "__call__")):
                    yield f"{node.name}.{header(sub)}", ast.get_docstring(sub)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and not any(isinstance(t, ast.Name) and t.id.startswith("_")
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])):
            seg = lines[node.lineno - 1:node.end_lineno]
            yield "\n".join(seg[:3] + (["..."] if len(seg) > 3 else [])), None

def render_export(src: str) -> str:
    "An `#| export` cell: signatures and docstrings, the source collapsed; nothing for an imports-only cell."
    try: items = list(api_items(src))
    except SyntaxError: items = [("", None)]
    if not items: return ""
    sigs = "".join(f'<div class="sig">{code(sig) if sig else ""}{markdown(doc) if doc else ""}</div>' for sig, doc in items)
    return f'<div class="api">{sigs}<details><summary>source</summary>{code(src)}</details></div>'

def render_cell(cell, idx: int, page: Page, note) -> str:
    "One cell as HTML ('' for a hidden one); `note` says why a code cell did not run."
    d = directives(cell.source)
    if cell.cell_type == "raw" or HIDDEN & d.keys() or d.get("include") == "false": return ""
    if cell.cell_type == "markdown": return f'<section class="md">{page.copy_local_images(markdown(cell.source))}</section>'
    src = strip_directives(cell.source)
    if "export" in d or "exports" in d: body = render_export(src)
    else: body = code(src) if src and d.get("echo") != "false" else ""
    if d.get("output") != "false": body += "".join(render_output(o, page) for o in cell.get("outputs", []))
    if d.get("code-fold") == "true" and body:             # an exercise's solution: folded, as Quarto would
        first = src.splitlines()[0].lstrip("# ").strip() if src.startswith("#") else "Solution"
        body = f'<details class="fold"><summary>{html.escape(first or "Solution")}</summary>{body}</details>'

    if note and body: body += f'<p class="skipped">Not run in this build: {html.escape(note)}.</p>'
    return f'<div class="cell" id="cell-{idx + 1}">{body}</div>' if body else ""

# ----------------------------------------------------------------------------------------- page layout

CSS = """
*{box-sizing:border-box} body{margin:0;font:17px/1.6 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a}
nav{position:fixed;top:0;bottom:0;left:0;width:17rem;overflow-y:auto;padding:1rem;background:#f4f6f8;
 border-right:1px solid #dde2e7;font-size:.9rem} nav .site{font-weight:700;font-size:1.15rem;color:#1d232a}
nav ol{list-style:none;padding:0;margin:1rem 0} nav li a{display:block;padding:.2rem .5rem;border-radius:4px;
 color:#33414f;text-decoration:none} nav li a:hover{background:#e3e8ee}
nav li a[aria-current]{background:#1f5f99;color:#fff;font-weight:600}
main{margin-left:17rem;padding:1.5rem 2.5rem 4rem;max-width:58rem} a{color:#1f5f99}
h1{font-size:2rem;line-height:1.25;margin:.5rem 0} h1+blockquote{border:0;padding:0;margin:0 0 1.5rem;
 color:#4b5968;font-size:1.1rem} blockquote{border-left:4px solid #c9d3dc;margin:1rem 0;padding:.1rem 1rem;color:#3c4957}
pre{background:#f6f8fa;border:1px solid #e1e6eb;border-radius:6px;padding:.6rem .8rem;overflow-x:auto;
 font:14px/1.45 ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace} code{font-family:ui-monospace,
 "DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.9em;background:#f1f3f5;padding:.05em .25em;border-radius:3px}
pre code{background:none;padding:0} .cell{margin:1rem 0} .output{margin:.3rem 0 0}
pre.output{background:#fff;border-color:#eef1f4} pre.stderr{background:#fff8e6;border-color:#f3e2b3;font-size:12px}
pre.error{background:#fdecec;border-color:#f1b7b7;color:#7a1010} .figure img{max-width:100%;height:auto}
.widget,.skipped{font-size:.85rem;color:#5d6b79;font-style:italic;margin:.2rem 0}
.api .sig{border-left:3px solid #1f5f99;padding-left:.8rem;margin:.8rem 0} .api .sig pre{margin:.2rem 0;
 background:#eef4fa;border-color:#d5e3f0} details>summary{cursor:pointer;color:#5d6b79;font-size:.85rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem} th,td{border:1px solid #dde2e7;padding:.25rem .6rem;
 text-align:left;vertical-align:top} th{background:#f4f6f8} .dataframe td,.dataframe th{text-align:right} math[display=block]{margin:.8rem 0;overflow-x:auto}
math{font-size:1.1em;font-family:"Latin Modern Math","STIX Two Math","Cambria Math","TeX Gyre Termes Math",
 "DejaVu Math TeX Gyre",math}
.pager{display:flex;justify-content:space-between;gap:1rem;margin-top:3rem;padding-top:1rem;border-top:1px solid #dde2e7}
@media (max-width:800px){nav{position:static;width:auto;border-right:0} main{margin-left:0;padding:1rem}}
""" + HtmlFormatter(style="default").get_style_defs(".hl")

def page_html(title: str, site: str, body: str, pages: list, current: int) -> str:
    "A whole page: sidebar (every page in course order, the current one marked), body, previous/next links."
    def link(i, text=None):
        cur = ' aria-current="page"' if i == current and text is None else ""
        return f'<a href="{pages[i][0]}.html"{cur}>{html.escape(text or pages[i][1])}</a>'
    items = "".join(f"<li>{link(i)}</li>" for i in range(len(pages)))
    prev = link(current - 1, "← " + pages[current - 1][1]) if current > 0 else "<span></span>"
    nxt = link(current + 1, pages[current + 1][1] + " →") if current + 1 < len(pages) else "<span></span>"
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)} · {html.escape(site)}</title><style>{CSS}</style></head>\n"
            f'<body><nav><a class="site" href="index.html">{html.escape(site)}</a><ol>{items}</ol></nav>\n'
            f'<main><article>{body}</article>\n<footer class="pager">{prev}{nxt}</footer></main></body></html>\n')

# -------------------------------------------------------------------------------------------- checking

class _Scan(HTMLParser):
    "Collects a page's prose text (outside code, maths, scripts), image sources and local links."
    SKIP = {"pre", "code", "script", "style", "math"}
    def __init__(self):
        super().__init__(); self.depth, self.text, self.srcs, self.hrefs = 0, [], [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs); self.depth += tag in self.SKIP
        if tag == "img": self.srcs.append(a.get("src", ""))
        if tag == "a" and a.get("href") and not re.match(r"[a-z]+:|#", a["href"]): self.hrefs.append(a["href"])
    def handle_endtag(self, tag): self.depth -= tag in self.SKIP
    def handle_data(self, data):
        if self.depth == 0: self.text.append(data)

def check_page(path: Path, pages=()) -> list:
    """Problems of a built page: raw `$` in its prose, images or local links whose files are missing (other than
    `pages`, the file names of the course's pages: a build with --only writes some of them)."""
    scan = _Scan(); scan.feed(path.read_text())
    problems = [f"{path.name}: raw '$' in the text: ...{t.strip()[:60]}..." for t in scan.text if "$" in t]
    problems += [f"{path.name}: missing image {s}" for s in scan.srcs if not (path.parent / s).is_file()]
    problems += [f"{path.name}: broken link {h}" for h in scan.hrefs
                 if h.split("#")[0] not in pages and not (path.parent / h.split("#")[0]).is_file()]
    return problems

# ------------------------------------------------------------------------------------------------ build

def run_notes(nb, execute_nb: bool, slow: bool, timeout_s: float, cwd: Path):
    "Execute `nb` (or not); return the first failure (cell index or None, message) and why each cell did not run."
    failed = None
    if execute_nb:
        try: failed = execute(nb, cwd, slow, timeout_s)
        except Exception as e: failed = (None, f"the kernel failed: {type(e).__name__}: {e}")
    notes = {}
    for i, cell in enumerate(nb.cells):
        reason = skip_reason(cell, slow) if execute_nb and cell.cell_type == "code" else None
        if failed and cell.cell_type == "code" and (failed[0] is None or i > failed[0]):
            reason = reason or "an earlier cell failed"
        if reason: notes[i] = reason
    return failed, notes

def build_page(path: Path, out: Path, pages: list, current: int, execute_nb: bool, slow: bool, timeout_s: float,
               site: str) -> Page:
    "Execute (or not) and render one notebook to out/<stem>.html."
    nb = nbformat.read(path, as_version=4)
    page = Page(path.stem, out, path.parent)
    failed, notes = run_notes(nb, execute_nb, slow, timeout_s, path.parent)
    body = [f'<pre class="output error">{html.escape(failed[1])}</pre>'] if failed and failed[0] is None else []
    if failed: page.errors.append(failed)
    for i, cell in enumerate(nb.cells):
        try: body.append(render_cell(cell, i, page, notes.get(i)))
        except ValueError as e:
            page.errors.append((i, str(e))); body.append(f'<pre class="output error">{html.escape(str(e))}</pre>')
    (out / f"{path.stem}.html").write_text(page_html(pages[current][1], site, "\n".join(body), pages, current))
    return page

def cell_no(i) -> str:
    "A cell index as people count cells (from 1)."
    return "?" if i is None else str(i + 1)

def build_site(nbs: Path, out: Path, execute: bool = True, slow: bool = False, only=None,
               timeout_s: float = 1800, site: str = "cryoseg") -> list:
    "Build the site of the notebooks in `nbs` into `out`; print one line per notebook; return the `Page`s."
    paths = course_order(nbs)
    pages = [(p.stem, page_title(p)) for p in paths]
    (out / "img").mkdir(parents=True, exist_ok=True)
    built = []
    for i, path in enumerate(paths):
        if only and not any(fnmatch.fnmatch(path.stem, f"{n}*") for n in only): continue
        for old in (out / "img").glob(f"{path.stem}-*"): old.unlink()
        t0 = time.monotonic()
        try: page = build_page(path, out, pages, i, execute, slow, timeout_s, site)
        except Exception as e: page = Page(path.stem, out, nbs, [(None, f"cannot render it: {type(e).__name__}: {e}")])
        status = "ok" if not page.errors else f"FAILED at cell {cell_no(page.errors[0][0])}: {page.errors[0][1][:200]}"
        print(f"{path.name:<32} {time.monotonic() - t0:7.1f} s  {page.n_images:3d} figures  {status}", flush=True)
        built.append(page)
    return built

def main(argv=None) -> int:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=root / "_site", help="output folder (default: _site)")
    ap.add_argument("--nbs", type=Path, default=root / "nbs", help="notebook folder (default: nbs)")
    ap.add_argument("--execute", action=argparse.BooleanOptionalAction, default=True,
                    help="run the notebooks (default) or render the outputs they store")
    ap.add_argument("--slow", action="store_true", help="also run cells marked `#| slow`")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="build only notebooks whose name starts with NAME")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed per notebook (default 1800)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    built = build_site(args.nbs, args.out, args.execute, args.slow, args.only, args.timeout)
    failures = [f"{p.stem}.ipynb cell {cell_no(c)}: {m}" for p in built for c, m in p.errors]
    course = [f"{p.stem}.html" for p in course_order(args.nbs)] if args.only else []
    failures += [pr for p in built if (args.out / f"{p.stem}.html").is_file()
                 for pr in check_page(args.out / f"{p.stem}.html", course)]
    for f in failures: print("FAIL", f, file=sys.stderr)
    print(f"{len(built)} pages in {args.out} ({time.monotonic() - t0:.0f} s); {len(failures)} problems")
    return 1 if failures or not built else 0

if __name__ == "__main__":
    sys.exit(main())

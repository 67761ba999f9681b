"""The offline course website (tools/build_site.py): built from small notebooks made here, checked as HTML
and in a real headless Chromium (skipped where /usr/bin/chromium is absent), plus a build of the real index."""
import base64
import html
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("build_site", ROOT / "tools" / "build_site.py")
bs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bs)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is absent: `apt-get install -y chromium` (Debian) to run the browser checks")

FIGURE = """import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(3, 2))
ax.plot([0, 1, 2], [0, 1, 4]); ax.set_xlabel("x (px)"); ax.set_ylabel("y")
plt.show()"""


def write_nb(path: Path, cells: list):
    nb = new_notebook(cells=[new_markdown_cell(c[3:]) if c.startswith("md:") else new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def make_course(nbs: Path):
    "Three small notebooks with every kind of cell the builder must handle."
    nbs.mkdir()
    write_nb(nbs / "index.ipynb", [
        "md:# Demo course\n\n> Synthetic pages for the site builder's tests.\n\n"
        "The wavelength $\\lambda = h / \\sqrt{2 m E}$ sets the scale, and a CTF is\n\n"
        "$$\\mathrm{CTF}(k) = -\\sin\\big(\\pi \\lambda \\Delta f k^2\\big), \\qquad k \\ge 0.$$\n\n"
        "Next: [the second lesson](01_second.ipynb).",
        "#| default_exp demo",
        "#| hide\nSECRET_HIDDEN = 'hidden cell ran'\nprint(SECRET_HIDDEN)",
        "#| export\nimport math\n\ndef disc_area_px(radius_px: float) -> float:\n"
        "    \"Area of a disc of `radius_px` pixels, in square pixels.\"\n    return math.pi * radius_px**2",
        "print(round(disc_area_px(2.0), 3))",
        FIGURE,
        "import pandas as pd\npd.DataFrame({'snr': [0.05, 0.1], 'f1': [0.81, 0.93]})",
        "#| eval: false\nraise RuntimeError('EVAL_FALSE_RAN')",
        "#| slow\nprint('SLOW_CELL_RAN')",
        "#| exporti\n_PRIVATE_HELPER = 'private export'",
        "#| code-fold: true\n# Solution 1\nprint('FOLDED_SOLUTION_RAN')",
        "#| hide\nimport nbdev; nbdev.nbdev_export()",
    ])
    write_nb(nbs / "01_second.ipynb", [
        "md:# Second lesson\n\nThe dose is $D = N / A$ electrons per $\\mathring{A}^2$; "
        "a mean of $\\bar x = \\frac{1}{n}\\sum_i x_i$.",
        "import sys\nfor i in range(3): print(f'epoch {i}', end='\\r')\nprint('done')\n"
        "print('a warning for the reader', file=sys.stderr)",
        FIGURE.replace("[0, 1, 4]", "[4, 1, 0]"),
        "import ipywidgets as w\nw.IntSlider(value=3)",
    ])
    write_nb(nbs / "20_tutorial.ipynb", ["md:# Tutorial\n\nNo code here, only $x^2$ and a diagram:\n\n"
                                         "![a diagram](images/diagram.png)"])
    (nbs / "images").mkdir()
    plt.imsave(nbs / "images" / "diagram.png", np.outer(np.arange(32), np.arange(48)))
    write_nb(nbs / "_scratch.ipynb", ["md:# Scratch, never published"])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    nbs = tmp_path_factory.mktemp("course") / "nbs"
    make_course(nbs)
    out = nbs.parent / "_site"
    pages = bs.build_site(nbs, out, execute=True, timeout_s=300, site="demo")
    return out, pages


def read_page(out, name):
    return (out / f"{name}.html").read_text()


# -------------------------------------------------------------------------------------- structure

def test_course_order(tmp_path):
    for n in ["zz_extra", "21_b", "20_a", "11a_cli", "02a_x", "00_core", "index", "_scratch", "course"]:
        (tmp_path / f"{n}.ipynb").write_text("{}")
    assert [p.stem for p in bs.course_order(tmp_path)] == [
        "index", "course", "00_core", "02a_x", "11a_cli", "20_a", "21_b", "zz_extra"]


def test_directives():
    assert bs.directives("#| eval: false\n#|hide\nx = 1\n#| export") == {"eval": "false", "hide": ""}
    assert bs.strip_directives("#| export\ndef f(): pass") == "def f(): pass"


def test_builds_every_page_without_errors(site):
    out, pages = site
    assert [p.stem for p in pages] == ["index", "01_second", "20_tutorial"]
    assert all(not p.errors for p in pages), [p.errors for p in pages]
    assert not (out / "_scratch.html").exists()
    for p in pages: assert bs.check_page(out / f"{p.stem}.html") == []  # no raw $, images exist, links resolve


def test_hidden_cells_removed_and_directives_stripped(site):
    out, _ = site
    page = read_page(out, "index")
    for hidden in ["SECRET_HIDDEN", "hidden cell ran", "default_exp", "_PRIVATE_HELPER", "nbdev_export", "#|"]:
        assert hidden not in page, hidden


def test_solutions_folded(site):
    "An exercise's solution (`#| code-fold: true`) is run and shown inside a closed <details>, titled by its comment."
    page = read_page(site[0], "index")
    fold = re.search(r'<details class="fold"><summary>(.*?)</summary>(.*?)</details>', page, re.S)
    assert fold and fold[1] == "Solution 1" and "FOLDED_SOLUTION_RAN" in fold[2], page[-2000:]


def test_export_cell_shown_as_signature_and_docstring(site):
    page = read_page(site[0], "index")
    api = re.search(r'<div class="api">(.*?)</div></div>', page, re.S)[0]
    assert "disc_area_px" in api and "Area of a disc of <code>radius_px</code> pixels" in api
    assert "<details><summary>source</summary>" in api
    assert "12.566" in page  # the cell using it ran


def test_maths_converted_to_mathml(site):
    out, _ = site
    page = read_page(out, "index")
    assert page.count("<math") == 2 and 'display="block"' in page and "$" not in page
    assert "<math" in read_page(out, "01_second") and "$" not in read_page(out, "01_second")


def test_outputs(site):
    out, _ = site
    index, second = read_page(out, "index"), read_page(out, "01_second")
    imgs = re.findall(r'<img src="([^"]+)"', index + second)
    assert len(imgs) == 2 and all((out / s).stat().st_size > 1000 for s in imgs)
    assert (out / "images" / "diagram.png").is_file()  # a markdown image of nbs/ is copied
    assert 'class="dataframe' in index and "0.93" in index  # pandas table as HTML
    assert "Not run in this build: eval: false" in index and "Not run in this build: slow" in index
    assert 'class="output error"' not in index and '<pre class="output stdout">SLOW_CELL_RAN' not in index
    assert "epoch 2" not in second and "done" in second  # \r rewrites applied
    assert "a warning for the reader" in second
    assert "Interactive widget: it needs a live Jupyter kernel" in second


def test_sidebar_and_pager(site):
    out, _ = site
    for name in ["index", "01_second", "20_tutorial"]:
        page = read_page(out, name)
        nav = re.search(r"<nav>(.*?)</nav>", page, re.S)[1]
        assert re.findall(r'<li><a href="([^"]+)"', nav) == ["index.html", "01_second.html", "20_tutorial.html"]
        assert re.findall(r'href="([^"]+)" aria-current="page"', nav) == [f"{name}.html"]
    pager = re.search(r'<footer class="pager">(.*?)</footer>', read_page(out, "01_second"), re.S)[1]
    assert 'href="index.html"' in pager and 'href="20_tutorial.html"' in pager
    assert 'href="01_second.html"' in read_page(out, "index")  # the .ipynb link now points to the page


def test_failing_cell_shown_and_build_fails(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    write_nb(nbs / "index.ipynb", ["md:# Broken", "x = 1", "1 / 0", "print('after the error')"])
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "build_site.py"), "--nbs", str(nbs),
                        "--out", str(tmp_path / "site")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "index.ipynb cell 3: ZeroDivisionError" in r.stderr
    page = (tmp_path / "site" / "index.html").read_text()
    assert '<pre class="output error">' in page and "ZeroDivisionError" in page
    assert "Not run in this build: an earlier cell failed" in page


def test_no_execute_renders_stored_outputs(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    buf = io.BytesIO()
    plt.imsave(buf, np.eye(8), format="png")
    cell = new_code_cell("show()", outputs=[
        new_output("stream", name="stdout", text="stored text\n"),
        new_output("display_data", data={"image/png": base64.b64encode(buf.getvalue()).decode(), "text/plain": "<Figure>"}),
        new_output("stream", name="stderr", text="  0%|          | 0/3 [00:00<?, ?it/s]\r100%|##########| 3/3\n")])
    nbformat.write(new_notebook(cells=[new_markdown_cell("# Stored"), cell]), nbs / "index.ipynb")
    (page,) = bs.build_site(nbs, tmp_path / "site", execute=False)
    text = (tmp_path / "site" / "index.html").read_text()
    assert not page.errors and page.n_images == 1 and "stored text" in text
    assert "it/s" not in text and 'class="output stderr"' not in text  # the progress bar is trimmed, leaving no stderr block
    assert "Not run in this build" not in text


def test_real_course_index_builds(tmp_path):
    "The real notebooks are rewritten often: only check that the builder handles them, not their content."
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "build_site.py"), "--no-execute", "--only", "index",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    page = (tmp_path / "index.html").read_text()
    n_nbs = len([p for p in (ROOT / "nbs").glob("*.ipynb") if not p.name.startswith("_")])
    nav = re.search(r"<nav>(.*?)</nav>", page, re.S)[1]
    assert nav.count("<li><a href=") == n_nbs and 'href="index.html" aria-current="page"' in nav


# ------------------------------------------------------------------------------------ in a browser

SELFCHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images], maths = [...document.querySelectorAll('math')];
  document.body.setAttribute('data-selfcheck', JSON.stringify({
    images: imgs.length, images_loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    maths: maths.length,
    maths_laid_out: maths.filter(m => m instanceof MathMLElement && m.getBoundingClientRect().height > 0).length,
    dollars: (document.body.innerText.match(/[$]/g) || []).length,
    errors: document.querySelectorAll('.error').length,
    current: [...document.querySelectorAll('nav [aria-current]')].map(a => a.getAttribute('href')),
  }));
});
</script>"""


def chromium(*args, profile: Path):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def selfcheck(page: Path, profile: Path) -> dict:
    "Open a copy of `page` (same folder, so relative links work) with SELFCHECK added; return what it found."
    copy = page.with_name(f"selfcheck-{page.name}")
    copy.write_text(page.read_text().replace("</body>", SELFCHECK + "</body>"))
    r = chromium("--dump-dom", copy.as_uri(), profile=profile)
    copy.unlink()
    m = re.search(r'data-selfcheck="([^"]*)"', r.stdout)
    assert m, f"no self-check in Chromium's DOM of {page.name}: {r.stderr[-2000:]}"
    return json.loads(html.unescape(m[1]))


@needs_chromium
def test_pages_in_chromium(site, tmp_path):
    out, pages = site
    seen = {p.stem: selfcheck(out / f"{p.stem}.html", tmp_path / "profile") for p in pages}
    for name, check in seen.items():
        assert check["images"] == check["images_loaded"], (name, check)
        assert check["maths"] == check["maths_laid_out"] > 0, (name, check)
        assert check["dollars"] == 0 and check["errors"] == 0, (name, check)
        assert check["current"] == [f"{name}.html"], (name, check)
    assert [seen[n]["images"] for n in ["index", "01_second", "20_tutorial"]] == [1, 1, 1]


@needs_chromium
def test_screenshot(site, tmp_path):
    shot = tmp_path / "index.png"
    chromium("--hide-scrollbars", "--window-size=1200,1400", f"--screenshot={shot}", (site[0] / "index.html").as_uri(),
             profile=tmp_path / "profile")
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


@needs_chromium
def test_real_index_in_chromium(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "build_site.py"), "--no-execute", "--only", "index",
                        "--out", str(tmp_path / "site")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    check = selfcheck(tmp_path / "site" / "index.html", tmp_path / "profile")
    assert check["errors"] == 0 and check["current"] == ["index.html"], check
    assert check["images"] == check["images_loaded"] and check["maths"] == check["maths_laid_out"], check


def test_every_notebook_names_its_kernel():
    "Opening a notebook in JupyterLab must not ask 'Select Kernel': every notebook carries a python3 kernelspec."
    root = Path(__file__).resolve().parents[1] / "nbs"
    missing = [nb.name for nb in sorted(root.glob("*.ipynb"))
               if json.loads(nb.read_text(encoding="utf-8")).get("metadata", {}).get("kernelspec", {}).get("name") != "python3"]
    assert not missing, f"notebooks without a python3 kernelspec: {missing}"

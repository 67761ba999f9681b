"""The package map in DEVELOPERS.md, checked: dependencies point down the layers, light modules stay light,
no module reaches into another's private names, and exported notebook cells stay small enough to teach from."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "cryoseg"

# layer of each library module (DEVELOPERS.md, "Package map"); `testing` is outside the library
LAYERS = {
    "core": 0, "particles": 0,
    "io": 1, "coords": 1, "fetch": 1,
    "volumes": 2, "ctf": 2, "projection": 2, "simulate": 2, "randomize": 2,
    "preprocess": 3, "labels": 3, "datasets": 3,
    "data": 4, "models": 4, "train": 4, "predict": 4, "crf": 4, "pick": 4, "metrics": 4, "baselines": 4,
    "plots": 5, "widgets": 5,
    "cli": 6,
}
# imports allowed inside a layer (importer -> imported); anything else in the same layer is a sideways tangle
SAME_LAYER = {
    "particles": {"core"},
    "coords": {"particles", "io"}, "fetch": {"io"},
    "simulate": {"volumes", "ctf", "projection"}, "randomize": {"simulate", "volumes", "ctf", "projection"},
    "labels": {"preprocess"}, "datasets": {"labels", "preprocess"},
    "data": set(), "train": {"data", "models", "metrics"}, "predict": {"models"},
    "baselines": {"pick", "metrics"},
    "widgets": {"plots"},
    "cli": {"cli"},
}
LIGHT = ["cryoseg.core", "cryoseg.particles", "cryoseg.io", "cryoseg.coords", "cryoseg.pick", "cryoseg.metrics"]
HEAVY = ("torch", "matplotlib")


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    return ".".join(rel.parts)


def library_modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if p.name not in ("__init__.py", "_modidx.py"))


def imports_of(path: Path) -> list[tuple[str, list[str], int, bool]]:
    """(cryoseg module imported, names taken from it, line, at module level) for every import in `path`,
    inside functions too: a lazy import of a higher layer is still a dependency on it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path).split(".")
    top_level = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:                                  # relative: resolve against this module's package
                base = me[:-node.level] if node.level <= len(me) else []
                mod = ".".join(["cryoseg", *base, *(node.module.split(".") if node.module else [])])
            else:
                mod = node.module or ""
            names = [a.name for a in node.names]
            if mod == "cryoseg":                            # `from cryoseg import volumes`
                for n in (n for n in names if not n.startswith("__")):   # `__version__` is not a module
                    out.append((f"cryoseg.{n}", [], node.lineno, id(node) in top_level))
            elif mod.startswith("cryoseg."):
                out.append((mod, names, node.lineno, id(node) in top_level))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("cryoseg."):
                    out.append((a.name, [], node.lineno, id(node) in top_level))
    return out


def layer_key(mod: str) -> str:
    "`cryoseg.cli.pick` -> `cli`; `cryoseg.io` -> `io`."
    return mod.split(".")[1]


def test_every_module_has_a_layer():
    found = {layer_key("cryoseg." + module_name(p)) for p in library_modules()} - {"testing"}
    assert found <= set(LAYERS), f"modules missing from the layer map: {sorted(found - set(LAYERS))}"
    assert set(LAYERS) <= found, f"layer map names modules that do not exist: {sorted(set(LAYERS) - found)}"


def test_dependencies_point_down():
    bad = []
    for p in library_modules():
        me = layer_key("cryoseg." + module_name(p))
        if me == "testing":
            continue
        for mod, _, line, _ in imports_of(p):
            other = layer_key(mod)
            if other == "testing":
                bad.append(f"{p.relative_to(ROOT)}:{line} imports cryoseg.testing (test support, not library)")
            elif other not in LAYERS:
                bad.append(f"{p.relative_to(ROOT)}:{line} imports unknown module {mod}")
            elif LAYERS[other] > LAYERS[me]:
                bad.append(f"{p.relative_to(ROOT)}:{line}: {me} (layer {LAYERS[me]}) imports {other} (layer {LAYERS[other]})")
            elif LAYERS[other] == LAYERS[me] and other != me and other != "core" and other not in SAME_LAYER.get(me, set()):
                bad.append(f"{p.relative_to(ROOT)}:{line}: {me} imports {other} sideways (not in SAME_LAYER)")
    assert not bad, "wrong-way imports:\n" + "\n".join(bad)


def test_no_private_names_across_modules():
    bad = []
    for p in library_modules():
        me = module_name(p)
        for mod, names, line, _ in imports_of(p):
            if mod == "cryoseg." + me:
                continue
            priv = [n for n in names if n.startswith("_") and n != "__version__"]
            if priv:
                bad.append(f"{p.relative_to(ROOT)}:{line} takes private {priv} from {mod}")
    assert not bad, "\n".join(bad)


def test_lower_layers_import_torch_and_matplotlib_lazily():
    "Layers 0-3 import torch / matplotlib only inside the functions that need them."
    bad = []
    for p in library_modules():
        me = layer_key("cryoseg." + module_name(p))
        if LAYERS.get(me, 99) > 3:
            continue
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in tree.body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in HEAVY for n in names):
                bad.append(f"{p.relative_to(ROOT)}:{node.lineno} imports {names} at module level")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", LIGHT)
def test_light_modules_do_not_pull_torch_or_matplotlib(module):
    code = (f"import sys, {module}; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import {module} pulled in {out}"


def exported_cells(nb: Path):
    for i, cell in enumerate(json.loads(nb.read_text(encoding="utf-8"))["cells"]):
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        first = src.lstrip().splitlines()[0] if src.strip() else ""
        if cell["cell_type"] == "code" and first.replace(" ", "").startswith(("#|export", "#|exporti", "#|exports")):
            yield i, len(src.splitlines())


def test_exported_cells_are_small():
    big = [f"{nb.name} cell {i}: {n} lines" for nb in sorted((ROOT / "nbs").glob("*.ipynb"))
           for i, n in exported_cells(nb) if n > 80]
    assert not big, "exported cells over 80 lines (one idea per cell):\n" + "\n".join(big)


def test_the_map_names_every_module():
    text = (ROOT / "DEVELOPERS.md").read_text(encoding="utf-8")
    missing = [m for m in [*LAYERS, "testing"] if f"`{m}`" not in text]
    assert not missing, f"DEVELOPERS.md's package map does not name {missing}"

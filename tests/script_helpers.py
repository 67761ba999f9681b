"Load a repository script (`bench/`, `tools/`) as a module, so that tests can call its functions."
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str):
    "The module of the script at `ROOT / relpath`, executed once per call (its `__main__` block does not run)."
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

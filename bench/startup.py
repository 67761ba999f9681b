"""Start-up cost: how long `import cryoseg.<module>` and `cryoseg <command> --help` take in a fresh process,
against a bare `python -c pass` measured in the same run (the ratio is what carries between machines).

    python bench/startup.py [--repeat 5]

Each figure is the best of `--repeat` fresh processes (wall time; the best is the least disturbed by other load).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

from cryoseg.core import describe_machine

MODULES = ["cryoseg.core", "cryoseg.io", "cryoseg.coords", "cryoseg.pick", "cryoseg.metrics", "cryoseg.simulate",
           "cryoseg.train", "cryoseg.plots"]


def best_of(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)
    base = best_of([sys.executable, "-c", "pass"], a.repeat)
    rows = [("python -c pass (baseline)", base)]
    for m in MODULES:
        rows.append((f"import {m}", best_of([sys.executable, "-c", f"import {m}"], a.repeat)))
    exe = shutil.which("cryoseg")
    for cmd in (["pick", "--help"], ["predict", "--help"]):
        line = [exe, *cmd] if exe else [sys.executable, "-m", "cryoseg.cli", *cmd]
        rows.append(("cryoseg " + " ".join(cmd), best_of(line, a.repeat)))
    print(f"Machine: {describe_machine('cpu')}; best of {a.repeat} fresh processes\n")
    print("| what | wall s | × python -c pass |\n|---|---|---|")
    for name, t in rows:
        print(f"| `{name}` | {t:.2f} | {t / base:.1f} |")


if __name__ == "__main__":
    main()

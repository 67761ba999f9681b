"""Speed and accuracy of pick_particles and the picking metrics, on large synthetic probability maps and tables.

Run: OMP_NUM_THREADS=1 python bench/pick_evaluate.py [size ...]      (default 1024 2048 4096)
     python bench/pick_evaluate.py --table 400000 [--cli]              (the metrics on a 400,000-particle table)

Maps: particles of diameter 40 px at random centres at least one diameter apart (so many touch), 30% of
the area covered, probability 0.9 inside + uniform noise in [0, 0.2).
Tables (`--table N`): N true particles, 200 per 4096² micrograph (diameter 40 px, uniform centres, so some
overlap); picks: 90 % of the particles found within ±3 px, 5 % picked twice (±8 px), 15 % false picks
anywhere; scores higher for true picks. `--cli` also times `cryoseg evaluate` on the same tables written as
two RELION STAR files (reading included)."""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cryoseg.core import describe_machine
from cryoseg.metrics import match_picks, picking_metrics, picking_report, picking_table, pr_curve
from cryoseg.pick import pick_particles
from cryoseg.testing import pick_tables as make_tables


def make(N, d=40, cover=0.3, seed=0):
    rng = np.random.default_rng(seed)
    n_target = int(cover * N * N / (np.pi * d * d / 4))
    xy = []
    cand = rng.uniform(d, N - d, (n_target * 20, 2))
    from scipy.spatial import cKDTree
    for c in cand:                                   # dart throwing, min distance d
        if len(xy) >= n_target:
            break
        if not xy or cKDTree(np.array(xy)).query(c)[0] >= d:
            xy.append(c)
    xy = np.array(xy)
    yy, xx = np.ogrid[0:N, 0:N]
    m = np.zeros((N, N), bool)
    for cx, cy in xy:
        y0, y1, x0, x1 = int(cy - d), int(cy + d), int(cx - d), int(cx + d)
        m[y0:y1, x0:x1] |= (xx[:, x0:x1] - cx) ** 2 + (yy[y0:y1] - cy) ** 2 <= (d / 2) ** 2
    prob = np.clip(m * 0.9 + rng.uniform(0, 0.2, m.shape), 0, 1).astype(np.float32)
    return prob, xy


def timed(f):
    "(result, wall s, process CPU s) of f()."
    w, c = time.perf_counter(), time.process_time()
    r = f()
    return r, time.perf_counter() - w, time.process_time() - c


def bench_table(n: int, cli: bool) -> None:
    print(f"machine: {describe_machine('cpu')}")
    (picks, truth), w, _ = timed(lambda: make_tables(n))
    print(f"{len(truth)} true particles, {len(picks)} picks on {truth.micrograph.nunique()} micrographs "
          f"(made in {w:.1f} s)")
    rows = []
    for what, f in [("picking_metrics", lambda: picking_metrics(picks, truth, 40)),
                    ("picking_table", lambda: picking_table(picks, truth, 40)),
                    ("picking_report (metrics + table, one matching)", lambda: picking_report(picks, truth, 40)),
                    ("pr_curve (50 thresholds)", lambda: pr_curve(picks, truth, 40)),
                    ("picking_metrics rule='box_iou'", lambda: picking_metrics(picks, truth, 40, rule="box_iou")),
                    ("picking_metrics rule='within'", lambda: picking_metrics(picks, truth, 40, rule="within"))]:
        r, w, c = timed(f)
        rows.append((what, w, c))
        print(f"  {what}: {w:.2f} s wall, {c:.2f} s CPU", flush=True)
    m = picking_metrics(picks, truth, 40)
    print(f"  P {m['precision']:.4f} R {m['recall']:.4f} F1 {m['f1']:.4f} centre error {m['mean_error_px']:.3f} px")
    if cli:
        from cryoseg.cli.evaluate import run_evaluate
        from cryoseg.coords import write_particles
        with tempfile.TemporaryDirectory() as d:
            write_particles(Path(d) / "picks.star", picks)
            write_particles(Path(d) / "truth.star", truth)
            _, w, c = timed(lambda: run_evaluate(Path(d) / "picks.star", Path(d) / "truth.star", 40, out=Path(d) / "ev"))
            print(f"  cryoseg evaluate (two STAR files read, metrics, per-micrograph CSV): {w:.2f} s wall, {c:.2f} s CPU")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sizes", nargs="*", type=int, help="probability map sizes (default 1024 2048 4096)")
    ap.add_argument("--table", type=int, default=None, metavar="N", help="time the metrics on N true particles")
    ap.add_argument("--cli", action="store_true", help="with --table: also time `cryoseg evaluate` on STAR files")
    args = ap.parse_args()
    if args.table:
        bench_table(args.table, args.cli)
        sys.exit(0)
    for N in args.sizes or [1024, 2048, 4096]:
        prob, xy = make(N)
        t = time.perf_counter(); p = pick_particles(prob, 40); tp = time.perf_counter() - t
        t = time.perf_counter(); m = picking_metrics(p, xy, 40); tm = time.perf_counter() - t
        print(f"{N}²: {len(xy)} particles, {len(p)} picks, pick_particles {tp:.2f} s, picking_metrics {tm:.3f} s, "
              f"P {m['precision']:.3f} R {m['recall']:.3f} F1 {m['f1']:.3f} centre error {m['mean_error_px']:.2f} px")
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 4096, (5000, 2)), rng.uniform(0, 4096, (5000, 2))
    t = time.perf_counter(); r = match_picks(a, b, 20); print(f"match_picks 5000 x 5000 random, r 20 px: {time.perf_counter() - t:.3f} s, {len(r[0])} pairs")

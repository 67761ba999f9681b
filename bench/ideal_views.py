"""How the ideal observer that knows the molecule but not the views converges with the number of views.

On `bench/quality.py`'s seeded test micrographs (same size, particles, SNR and seeds), the matched filter with
every particle's true view, then with n random views of the true volume (`cryoseg.baselines.ideal_observer_picks`),
each with its likelihood ratios combined over the signals in two ways: the best one (`combine="max"`, the
generalised likelihood ratio of template matching) and their average (`"mean"`, the Bayes observer). Scored as in
`bench/quality.py`: F1 of the picks above the log prior odds, AP and the best F1 over every spaced local maximum.

    OMP_NUM_THREADS=2 python bench/ideal_views.py --views 100,1000              # ~6 min on a 2-core CPU
    python bench/ideal_views.py --views 100,1600,6400 --snr 0.05                # the BENCHMARKS.md table, ~35 min
    python bench/ideal_views.py --size 256 --n-particles 8 --n-test 2 --views 4   # end-to-end check, seconds
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd


def observer_rows(results, names, truth, diameter, views, combine: str, n_boot: int) -> dict:
    "Scores of one ideal observer (`views`: 'true' or a number of random views) on the SimResults `results`."
    from quality import ideal_scores
    s = ideal_scores(results, names, truth, diameter, None, "true" if views == "true" else "random",
                     0 if views == "true" else int(views), n_boot, combine)
    return dict(views=views, combine=combine, f1_own=s["f1"], f1_best=s["f1_best"], ap=s["ap"],
                ap_lo=s["ap_lo"], ap_hi=s["ap_hi"])


def main(argv=None) -> pd.DataFrame:
    from quality import simulate_results
    from cryoseg.simulate import SimConfig
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024); ap.add_argument("--n-particles", type=int, default=60)
    ap.add_argument("--snr", type=float, default=0.05, help="footprint SNR (Gaussian noise), as bench/quality.py")
    ap.add_argument("--n-test", type=int, default=4); ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--views", default="100,1000", help="comma-separated numbers of random views")
    ap.add_argument("--bootstrap", type=int, default=1000)
    a = ap.parse_args(argv)
    cfg = SimConfig(shape=(a.size, a.size), n_particles=a.n_particles, snr=a.snr)
    results = simulate_results(a.n_test, cfg, a.seed + 2000, None)      # bench/quality.py's test split
    names = [f"mic_{i:04d}.mrc" for i in range(a.n_test)]
    truth = pd.concat([r.particles.assign(micrograph=n) for r, n in zip(results, names)], ignore_index=True)
    diameter = float(np.nanmedian(truth["diameter_px"]))
    rows = []
    for views in ["true"] + [int(v) for v in a.views.split(",") if v.strip()]:
        for combine in ("max", "mean"):
            t0 = time.perf_counter()
            rows.append(observer_rows(results, names, truth, diameter, views, combine, a.bootstrap))
            rows[-1]["seconds"] = time.perf_counter() - t0
            r = rows[-1]
            print(f"{views} views, {combine}: F1 {r['f1_own']:.3f} at the log prior odds, best F1 {r['f1_best']:.3f}, "
                  f"AP {r['ap']:.3f} ({r['seconds']:.0f} s)", flush=True)
    df = pd.DataFrame(rows)
    print("\n| views | combine | F1 (log prior odds) | best F1 | AP |\n|---|---|---|---|---|")
    for r in df.itertuples():
        print(f"| {r.views} | {r.combine} | {r.f1_own:.3f} | {r.f1_best:.3f} | {r.ap:.3f} [{r.ap_lo:.2f}, {r.ap_hi:.2f}] |")
    return df


if __name__ == "__main__":
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()

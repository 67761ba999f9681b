"""Speed and accuracy of pick_particles and match_picks on large synthetic probability maps.

Run: OMP_NUM_THREADS=1 python bench/pick_evaluate.py [size ...]   (default 1024 2048 4096)
Particles of diameter 40 px at random centres at least one diameter apart (so many touch), 30% of
the area covered, probability 0.9 inside + uniform noise in [0, 0.2)."""
import sys
import time

import numpy as np

from cryoseg.metrics import match_picks, picking_metrics
from cryoseg.pick import pick_particles


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


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [1024, 2048, 4096]
    for N in sizes:
        prob, xy = make(N)
        t = time.perf_counter(); p = pick_particles(prob, 40); tp = time.perf_counter() - t
        t = time.perf_counter(); m = picking_metrics(p, xy, 40); tm = time.perf_counter() - t
        print(f"{N}²: {len(xy)} particles, {len(p)} picks, pick_particles {tp:.2f} s, picking_metrics {tm:.3f} s, "
              f"P {m['precision']:.3f} R {m['recall']:.3f} F1 {m['f1']:.3f} centre error {m['mean_error_px']:.2f} px")
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 4096, (5000, 2)), rng.uniform(0, 4096, (5000, 2))
    t = time.perf_counter(); r = match_picks(a, b, 20); print(f"match_picks 5000 x 5000 random, r 20 px: {time.perf_counter() - t:.3f} s, {len(r[0])} pairs")

"""I/O speed: a 4096² float32 MRC micrograph and coordinate files of many particles, in every format.

    OMP_NUM_THREADS=1 python bench/io.py              # 100 000 particles
    python bench/io.py --n 20000 --size 2048

Prints seconds per write/read (best of --repeat) and checks that each round trip is exact.
"""
from __future__ import annotations

import argparse
from functools import partial
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cryoseg.coords import read_particles, write_particles
from cryoseg.io import read_micrograph, write_micrograph
from cryoseg.particles import make_particles
from cryoseg.core import describe_machine


def best(f, repeat):
    ts = []
    for _ in range(repeat):
        t = time.perf_counter(); out = f(); ts.append(time.perf_counter() - t)
    return min(ts), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000, help="particles per coordinate file")
    ap.add_argument("--size", type=int, default=4096, help="micrograph side in pixels")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"machine: {describe_machine()}")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        img = rng.normal(size=(a.size, a.size)).astype(np.float32)
        tw, _ = best(lambda: write_micrograph(d / "m.mrc", img, 1.0, overwrite=True), a.repeat)
        tr, (back, _) = best(lambda: read_micrograph(d / "m.mrc"), a.repeat)
        assert np.array_equal(back, img)
        print(f"MRC {a.size}x{a.size} float32: write {tw:.3f} s, read {tr:.3f} s")
        n = a.n
        p = make_particles(rng.uniform(0, 4096, n), rng.uniform(0, 4096, n), score=rng.random(n), micrograph="mic_0000",
                           diameter_px=64.0, rot_deg=rng.uniform(-180, 180, n), tilt_deg=rng.uniform(0, 180, n),
                           psi_deg=rng.uniform(-180, 180, n), defocus_u_um=rng.uniform(0.5, 3, n),
                           defocus_v_um=rng.uniform(0.5, 3, n), defocus_angle_deg=rng.uniform(0, 180, n),
                           particle_id=np.arange(1, n + 1))
        for ext in ("star", "box", "csv", "txt"):
            f = d / f"p.{ext}"
            tw, _ = best(partial(write_particles, f, p, overwrite=True), a.repeat)
            kw = {"micrograph": "mic_0000"} if ext in ("box", "csv") else {}
            tr, back = best(partial(read_particles, f, **kw), a.repeat)
            assert np.array_equal(back[["x", "y"]].to_numpy(), p[["x", "y"]].to_numpy())
            if ext == "star":
                pd.testing.assert_frame_equal(back, p, check_exact=True)
            print(f"{ext:4s} {n} particles ({f.stat().st_size / 1e6:.1f} MB): write {tw:.3f} s, read {tr:.3f} s")


if __name__ == "__main__":
    main()

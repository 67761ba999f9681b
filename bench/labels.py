"""Timings of cryoseg.labels and cryoseg.preprocess.downsample at real-data sizes (not a test).

    OMP_NUM_THREADS=1 python bench/labels.py [--full]

Default: a 4096² micrograph with 300 particles of 200 px (discs, downsampling to 1024²) and
footprint/reprojection labels on the 4x-downsampled grid (1024², 64-px box). `--full` also
projects a 256-px box at full resolution (the projector pads it to 512³; ~1 GB on the CPU).
"""
import argparse
import time

import numpy as np
import torch

from cryoseg.core import get_device
from cryoseg.labels import disc_labels, footprint_labels, reprojection_labels
from cryoseg.particles import make_particles
from cryoseg.preprocess import downsample
from cryoseg.projection import matrix_to_euler, random_rotations
from cryoseg.volumes import make_volume


def timed(label, fn, repeat=1):
    fn()  # warm-up (caches, allocations)
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    dt = (time.perf_counter() - t) / repeat
    print(f"{label:<62s} {dt * 1e3:9.1f} ms")
    return out


def particles(n, shape, diameter_px, seed=0):
    rng = np.random.default_rng(seed)
    H, W = shape
    xy = rng.uniform(diameter_px / 2, [W - diameter_px / 2, H - diameter_px / 2], size=(n, 2)).round()
    eul = matrix_to_euler(random_rotations(n, seed=rng)).reshape(n, 3)
    return make_particles(xy[:, 0], xy[:, 1], diameter_px=np.full(n, float(diameter_px)), rot_deg=eul[:, 0],
                          tilt_deg=eul[:, 1], psi_deg=eul[:, 2], particle_id=np.arange(1, n + 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="also project a 256-px box at full resolution")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    dev = get_device(args.device)
    print(f"device {dev}, torch threads {torch.get_num_threads()}")

    H = W = 4096
    p = particles(300, (H, W), 200)
    img = np.random.default_rng(0).normal(size=(H, W)).astype(np.float32)
    sem, inst = timed("disc_labels 4096², 300 discs of 200 px", lambda: disc_labels((H, W), p))
    timed("downsample image 4096² -> 1024² (Fourier crop)", lambda: downsample(img, factor=4))
    timed("downsample image 4096² -> 1024² (bin)", lambda: downsample(img, factor=4, method="bin"))
    timed("downsample 0/1 mask 4096² -> 1024² (area majority)", lambda: downsample(None, sem, factor=4))
    timed("downsample instance map 4096² -> 1024² (300 ids)", lambda: downsample(None, inst, factor=4))

    vol = make_volume("globular", box_size=64, pixel_size_a=4.0, diameter_a=200.0)
    p4 = p.assign(x=p.x / 4, y=p.y / 4, diameter_px=p.diameter_px / 4)
    timed("footprint_labels 1024², 300 particles, 64-px box", lambda: footprint_labels(vol, p4, (1024, 1024), device=dev))
    mask = (vol > 0.3 * vol.max()).astype(np.float32)
    timed("reprojection_labels 1024², 300 particles, 64-px mask", lambda: reprojection_labels(mask, p4, (1024, 1024), 4.0, device=dev))
    if args.full:
        volf = make_volume("globular", box_size=256, pixel_size_a=1.0, diameter_a=200.0)
        maskf = (volf > 0.3 * volf.max()).astype(np.float32)
        timed("reprojection_labels 4096², 300 particles, 256-px mask", lambda: reprojection_labels(maskf, p, (H, W), 1.0, device=dev))


if __name__ == "__main__":
    main()

"""Simulator speed benchmark: micrographs per second for a 4096² micrograph with 150 particles (box 128).

Times `simulate_micrograph` on the CPU (and on CUDA when present) with Gaussian noise, with all the
realism effects on, and with the physical preset (`SimConfig.realistic`: phase from the potential, shot
noise through a counting detector's MTF/DQE, the ice's own phase), after one warm-up call (which also caches the volume's 3D DFT, shared by every
micrograph of a dataset). Targets (issue 3): <= 2 s per micrograph on a 2-core CPU, >= 20/s on one H100.

    python bench/simulate.py                     # torch's default thread count
    python bench/simulate.py --threads 2 --repeat 3 --size 4096
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from cryoseg.simulate import SimConfig, simulate_micrograph
from cryoseg.volumes import make_volume
from cryoseg.core import describe_machine


def bench(cfg: SimConfig, volume: np.ndarray, device: str, repeat: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds per micrograph over `repeat` calls after one
    warm-up (CPU seconds, summed over threads, are what a busy shared machine does not inflate)."""
    simulate_micrograph(volume, cfg, seed=0, device=device)
    ts, cs = [], []
    for i in range(repeat):
        if device.startswith("cuda"): torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        simulate_micrograph(volume, cfg, seed=i + 1, device=device)
        if device.startswith("cuda"): torch.cuda.synchronize()
        ts.append(time.perf_counter() - t); cs.append(time.process_time() - c)
    return float(np.median(ts)), float(np.median(cs))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--particles", type=int, default=150)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--pixel-size", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--devices", default=None, help="comma-separated, default cpu and cuda when present")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe_machine())
    if hasattr(os, "getloadavg"):
        print(f"load average before: {os.getloadavg()[0]:.1f}")
    vol = make_volume("globular", box_size=args.box, pixel_size_a=args.pixel_size, seed=0)
    base = dict(shape=(args.size, args.size), pixel_size_a=args.pixel_size, box_size=args.box,
                n_particles=args.particles)
    cfgs = {"gaussian noise": SimConfig(**base),
            "all realism + shot noise": SimConfig(**base, noise="shot", ice_gradient=0.3, ice_noise_rad=0.02,
                                                  carbon=True, n_contaminants=4),
            "SimConfig.realistic()": SimConfig.realistic(**base)}
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"{args.size}² micrograph, {args.particles} particles, box {args.box}, {args.pixel_size} Å/px")
    for dev in devices:
        for name, cfg in cfgs.items():
            s, c = bench(cfg, vol, dev, args.repeat)
            print(f"  {dev:5s} {name:26s} {s:7.3f} s/micrograph  {1 / s:7.2f} micrographs/s   (CPU time {c:.2f} s)")


if __name__ == "__main__":
    main()

"""End-to-end speed: micrographs per second for each stage of the picking pipeline at 4096².

simulate (a 4096² micrograph with 150 particles) → tiled U-Net inference → dense CRF (tiled, torch;
pydensecrf2 with --pydensecrf) → picking, on the CPU and on CUDA when present. The network is the
default U-Net with random weights (speed does not depend on the weights). Wall seconds are the best of
`--repeat`; CPU seconds (this process, all threads) are printed too, because on a shared, busy machine
they are the fairer measure. Prints the machine and a markdown snippet for BENCHMARKS.md.

    OMP_NUM_THREADS=2 python bench/speed.py                       # 4096², CPU (+ CUDA if present)
    python bench/speed.py --size 1024 --repeat 3 --out speed.md   # smaller, and write the snippet
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from cryoseg.cli.common import machine_info


def timed(fn, repeat: int, sync=None):
    "Best-of-`repeat` (wall s, CPU s) of `fn()`, its peak CUDA memory in GB (None off CUDA), and its last result."
    best, out = (float("inf"), float("inf")), None
    if sync: torch.cuda.reset_peak_memory_stats()
    for _ in range(repeat):
        if sync: sync()
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        if sync: sync()
        w, c = time.perf_counter() - w, time.process_time() - c
        if w < best[0]: best = (w, c)
    peak = torch.cuda.max_memory_allocated() / 2**30 if sync else None
    return (*best, peak), out


def run(size: int, device: str, repeat: int, n_particles: int, tile_size: int, pydensecrf: bool) -> list[dict]:
    from cryoseg.simulate import SimConfig, simulate_micrograph
    from cryoseg.models import get_model
    from cryoseg.predict import predict_tiled
    from cryoseg.crf import crf_tiled
    from cryoseg.pick import pick_particles
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    cfg = SimConfig(shape=(size, size), n_particles=n_particles, box_size=128, pixel_size_a=1.0)
    rows = []
    (w, c, g), sim = timed(lambda: simulate_micrograph(None, cfg, seed=0, device=device), repeat, sync)
    rows.append(dict(stage=f"simulate ({n_particles} particles, box 128)", wall=w, cpu=c, peak=g))
    diameter = float(sim.params["diameter_px"])
    model = get_model("unet").to(device).eval()
    (w, c, g), prob = timed(lambda: predict_tiled(model, sim.image, tile_size=tile_size, overlap=64, device=device), repeat, sync)
    rows.append(dict(stage=f"tiled U-Net inference (tiles {tile_size}, overlap 64)", wall=w, cpu=c, peak=g))
    (w, c, g), q = timed(lambda: crf_tiled(prob, sim.image, method="torch", device=device), repeat, sync)
    rows.append(dict(stage="dense CRF, torch (5 iterations, `crf_tiled` default tiles)", wall=w, cpu=c, peak=g))
    if pydensecrf and device == "cpu":
        (w, c, _), _ = timed(lambda: crf_tiled(prob, sim.image, method="pydensecrf"), repeat)
        rows.append(dict(stage="dense CRF, pydensecrf2 (5 iterations, tiled)", wall=w, cpu=c))
    # a trained network's map is near 0/1; pick on the exact mask so the picker sees realistic regions
    pm = sim.mask.astype(np.float32)
    (w, c, _), picks = timed(lambda: pick_particles(pm, diameter), repeat)
    rows.append(dict(stage=f"picking ({len(picks)} particles)", wall=w, cpu=c))
    net_crf_pick = sum(r["wall"] for r in rows[1:] if "pydensecrf" not in r["stage"])
    rows.append(dict(stage="predict + CRF (torch) + pick", wall=net_crf_pick,
                     cpu=sum(r["cpu"] for r in rows[1:] if "pydensecrf" not in r["stage"])))
    for r in rows:
        r.update(device=device, size=size)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--n-particles", type=int, default=150)
    ap.add_argument("--tile-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--devices", default=None, help="comma-separated (default: cpu, and cuda when present)")
    ap.add_argument("--pydensecrf", action="store_true", help="also time pydensecrf2 on the CPU (slow at 4096²)")
    ap.add_argument("--out", default=None, help="write the markdown snippet here")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    devices = a.devices.split(",") if a.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    m = machine_info()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    head = (f"Machine: {m['host']}, {m['cpu_cores']} CPU cores ({m['cpu']}), torch {m['torch']} "
            f"({torch.get_num_threads()} threads), GPU: {m['gpu'] or 'none'}; load average at start {load}.")
    print(head, flush=True)
    rows = []
    for dev in devices:
        rows += run(a.size, dev, a.repeat, a.n_particles, a.tile_size, a.pydensecrf)
    lines = [f"### End-to-end speed, {a.size}² micrographs (`bench/speed.py`)", "", head, "",
             "| device | stage | s / micrograph (wall) | CPU s | micrographs / s | peak GPU memory |", "|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak']:.2f} GB" if r.get("peak") is not None else ""
        lines.append(f"| {r['device']} | {r['stage']} | {r['wall']:.2f} | {r['cpu']:.2f} | {1 / r['wall']:.3f} | {peak} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()

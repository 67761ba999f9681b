"""Where the time goes: one pipeline stage at a time, under `torch.profiler` (CPU and CUDA ops) and `cProfile`
(Python functions), after a warm-up call. Not a benchmark (the profilers add overhead); use it to find the
slow part, then measure with `bench/speed.py`.

    python bench/hotspots.py                              # all stages, 4096², CUDA when present
    python bench/hotspots.py --stages crf --size 2048 --device cpu
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import numpy as np
import torch


def stages(size: int, device: str) -> dict:
    "name → zero-argument callable, on one seeded 4096²-style problem."
    from cryoseg.simulate import SimConfig, simulate_micrograph
    from cryoseg.models import get_model
    from cryoseg.predict import predict_tiled
    from cryoseg.crf import dense_crf
    from cryoseg.pick import pick_particles
    cfg = SimConfig(shape=(size, size), n_particles=max(1, int(150 * (size / 4096) ** 2)), box_size=128, pixel_size_a=1.0)
    sim = simulate_micrograph(None, cfg, seed=0, device=device)
    model = get_model("unet").to(device).eval()
    rng = np.random.default_rng(0)
    prob = np.clip(sim.mask + rng.normal(0, 0.2, sim.mask.shape), 0, 1).astype(np.float32)
    d = float(sim.params["diameter_px"])
    return dict(simulate=lambda: simulate_micrograph(None, cfg, seed=1, device=device),
                predict=lambda: predict_tiled(model, sim.image, device=device),
                crf=lambda: dense_crf(prob, sim.image, device=device),
                pick=lambda: pick_particles(sim.mask.astype(np.float32), d))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--stages", nargs="*", default=["simulate", "predict", "crf", "pick"])
    ap.add_argument("--top", type=int, default=12, help="rows per table")
    a = ap.parse_args()
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fns = stages(a.size, a.device)
    for name in a.stages:
        fn = fns[name]
        fn(); sync()                                               # warm-up (CUDA context, cuDNN, caches)
        t = time.perf_counter(); fn(); sync(); wall = time.perf_counter() - t
        print(f"\n######## {name}, {a.size}², {a.device}: {wall:.3f} s wall (no profiler)", flush=True)
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=acts) as prof:
            fn(); sync()
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=a.top, max_name_column_width=48))
        pr = cProfile.Profile(); pr.enable(); fn(); sync(); pr.disable()
        s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(a.top)
        print("\n".join(line for line in s.getvalue().splitlines() if line.strip())[:6000], flush=True)


if __name__ == "__main__":
    main()

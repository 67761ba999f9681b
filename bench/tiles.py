"""Tile size and memory format of CPU inference: seconds per binned micrograph for `predict_tiled`.

A 4096² micrograph at 1 Å/px binned to a model at 4 Å/px is a 1024² map. `cryoseg predict`'s default
`--tile-size 512 --overlap 64` cuts it into nine 384² tiles (tiles are shrunk evenly to fit); larger tiles mean
fewer pixels predicted twice in the overlaps and fewer, larger convolutions. This measures, in one process and
with the repetitions interleaved (so a change in the machine's load hits every setting alike), the network time
of each tile size with the network channels-last (what `predict_tiled` does on the CPU) and contiguous, and
the largest difference of each map from the one-tile map (the tiling itself changes the map only at the
level of the U-Net's pooling grid). Speed is reported as a ratio against the default, plus the absolute
seconds with the machine named. The weights are random: speed does not depend on them.

    OMP_NUM_THREADS=2 python bench/tiles.py                 # 1024² map, CPU, 3 repetitions
    python bench/tiles.py --size 1024 --tiles 384,512,768,1024 --repeat 5 --out tiles.md
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from cryoseg.cli.common import machine_info


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="map side in pixels (default 1024: 4096² binned 4x)")
    ap.add_argument("--tiles", default="256,512,768,1024", help="--tile-size values to compare (512: the default)")
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--tta", default="rot180", help="test-time symmetry, as cryoseg predict's default")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the markdown snippet here too")
    a = ap.parse_args()
    from cryoseg.models import get_model
    from cryoseg.predict import _geometry, min_tile_size, predict_tiled
    torch.manual_seed(0)
    net = get_model("unet").eval()
    img = np.random.default_rng(0).normal(size=(a.size, a.size)).astype(np.float32)
    tiles = [int(t) for t in a.tiles.split(",")]
    settings = [(t, cl) for t in tiles for cl in (True, False)]
    best = {s: float("inf") for s in settings}
    maps = {}
    orig = predict_tiled.__globals__["_inference_mode"]

    import contextlib

    @contextlib.contextmanager
    def contiguous(model, device):                 # predict_tiled's inference mode without channels-last
        net_ = getattr(model, "module", model)
        net_.eval().to(device)
        yield net_

    for rep in range(a.repeat + 1):                # the first round warms up every shape (not timed)
        for t, cl in settings:
            predict_tiled.__globals__["_inference_mode"] = orig if cl else contiguous
            t0 = time.perf_counter()
            maps[t] = predict_tiled(net, img, tile_size=t, overlap=a.overlap, device="cpu", tta=a.tta)
            dt = time.perf_counter() - t0
            if rep:
                best[(t, cl)] = min(best[(t, cl)], dt)
    predict_tiled.__globals__["_inference_mode"] = orig
    ref_t = 512 if 512 in tiles else tiles[0]
    ref = best[(ref_t, True)]
    whole = maps[max(tiles)]
    lines = [f"Machine: {machine_info('cpu')['description']}.", "",
             f"{a.size}² map, U-Net (default, random weights), overlap {a.overlap}, tta {a.tta}, best of {a.repeat} "
             "interleaved repetitions; ratio = seconds of the default (tile 512, channels-last) / seconds.", "",
             "| --tile-size | tiles (each) | memory format | seconds | ratio vs default | max abs diff vs largest tile |",
             "|---|---|---|---|---|---|"]
    for t, cl in settings:
        th, tw, _, ys, xs = _geometry(a.size, a.size, t, a.overlap, min_tile_size(net))
        lines.append(f"| {t} | {len(ys) * len(xs)} ({th}²) | {'channels-last' if cl else 'contiguous'} | "
                     f"{best[(t, cl)]:.2f} | {ref / best[(t, cl)]:.2f}x | {np.abs(maps[t] - whole).max():.1e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()

"""Picking quality against peers on a fixed, seeded synthetic benchmark.

For each SNR (and ice/junk off or on) the same seeded train/val/test micrographs are simulated; then
  * U-Net (default), and with --models also FCN-ResNet50 / DeepLabv3-ResNet50 (slow on a CPU),
    each without CRF, with pydensecrf2 and with the torch CRF;
  * the blob picker (LoG) and template matching against projections of the true volume
    (an upper reference only a simulation allows);
  * Topaz (`pip install topaz-em`), trained through its own CLI on the same training micrographs and
    coordinates, when a `topaz` executable is found (--topaz-bin), evaluated with cryoseg's rule;
are scored on the test micrographs: pixel precision/recall/IoU (where there is a map) and picking
precision/recall/F1 + AP, matched one-to-one within 0.5 × diameter. Prints the machine and a
markdown snippet for BENCHMARKS.md.

    OMP_NUM_THREADS=2 python bench/quality.py --quick                  # minutes on a 2-core CPU
    python bench/quality.py --size 1024 --snrs 0.1,0.05,0.01 --junk both --epochs 30 --models unet,fcn_resnet50,deeplabv3_resnet50
    python bench/quality.py --topaz-bin /path/to/venv/bin/topaz         # add Topaz
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryoseg.cli.common import machine_info


def simulate_split(root: Path, n: int, cfg, seed: int):
    from cryoseg.simulate import simulate_dataset
    # on the CPU on every machine: the noise is drawn on the simulating device, so a GPU would give other data
    simulate_dataset(root, n_micrographs=n, cfg=cfg, seed=seed, progress=False, overwrite=True, device="cpu")
    return root


def load_split(root: Path):
    from cryoseg.data import load_folder
    from cryoseg.coords import read_particles
    from cryoseg.io import read_mask
    fd = load_folder(root)
    truth = pd.concat([read_particles(root / "coordinates" / f"{n}.star", allow_empty=True).assign(micrograph=f"{n}.mrc")
                       for n in fd.names], ignore_index=True)
    junk = [read_mask(root / "junk" / f"{n}.mrc") for n in fd.names]
    return fd, truth, junk


def score(picks, truth, names, diameter, preds=None, targets=None) -> dict:
    from cryoseg.metrics import picking_metrics, pr_curve, average_precision, pixel_metrics
    kw = dict(micrographs=names)
    m = picking_metrics(picks, truth, diameter, **kw)
    row = dict(precision=m["precision"], recall=m["recall"], f1=m["f1"], n_picks=m["n_picks"],
               ap=average_precision(pr_curve(picks, truth, diameter, **kw)) if len(picks) else 0.0)
    if preds is not None:
        px = pixel_metrics(preds, targets)
        row.update(pixel_precision=px["precision"], pixel_recall=px["recall"], pixel_iou=px["iou"])
    return row


def run_network(name, tr, va, te, diameter, epochs, out: Path, device, crop) -> list[dict]:
    from cryoseg.train import TrainConfig, fit
    from cryoseg.predict import predict_tiled
    from cryoseg.crf import crf_tiled
    from cryoseg.pick import pick_particles
    fdt, truth, _ = te
    cfg = TrainConfig(model=name, epochs=epochs, crop_size=crop, out_dir=str(out / name), overwrite=True,
                      progress=False, device=device)
    t0 = time.perf_counter()
    res = fit(cfg, (tr[0].images, tr[0].masks), (va[0].images, va[0].masks))
    t_train = time.perf_counter() - t0
    rows = []
    names = [f"{n}.mrc" for n in fdt.names]
    for crf in ("none", "pydensecrf", "torch"):
        picks, preds = [], []
        for img, n in zip(fdt.images, names):
            p = predict_tiled(res["model"], img, device=device)
            if crf != "none":
                p = crf_tiled(p, img, method=crf, device=device if crf == "torch" else None)
            preds.append(p > 0.5)
            picks.append(pick_particles(p, diameter, micrograph=n))
        r = score(pd.concat(picks, ignore_index=True), truth, names, diameter, preds, fdt.masks)
        rows.append(dict(method=f"{name}" + ("" if crf == "none" else f" + CRF ({crf})"), train_s=t_train, **r))
    return rows


def run_baselines(te, diameter, volume) -> list[dict]:
    from cryoseg.baselines import blob_picker, template_picker
    from cryoseg.projection import project, random_rotations
    fdt, truth, _ = te
    names = [f"{n}.mrc" for n in fdt.names]
    blob = pd.concat([blob_picker(im, diameter, micrograph=n) for im, n in zip(fdt.images, names)], ignore_index=True)
    templates = project(volume, random_rotations(24, seed=0))
    tm = pd.concat([template_picker(im, templates, diameter, micrograph=n) for im, n in zip(fdt.images, names)],
                   ignore_index=True)
    return [dict(method="blob picker (LoG)", **score(blob, truth, names, diameter)),
            dict(method="template matching (true volume, 24 views)", **score(tm, truth, names, diameter))]


def run_topaz(topaz: str, tr_root: Path, te_root: Path, tr, te, diameter, epochs: int, work: Path,
              epoch_size: int = 1000) -> list[dict]:
    """Topaz through its own CLI: `topaz train` on the training micrographs and true coordinates, then
    `topaz extract` on the test micrographs; picks scored with cryoseg's rule at Topaz's default
    threshold (score >= 0) and as AP over its scores."""
    from cryoseg.coords import read_topaz
    work.mkdir(parents=True, exist_ok=True)
    fd, truth, _ = tr
    truth.assign(image_name=truth["micrograph"].str.replace(".mrc", "", regex=False),
                 x_coord=truth["x"].round().astype(int), y_coord=truth["y"].round().astype(int))[
        ["image_name", "x_coord", "y_coord"]].to_csv(work / "train_targets.txt", sep="\t", index=False)
    radius = max(int(diameter / 2 * 0.6), 1)
    n_per = max(int(len(truth) / max(len(fd.names), 1)), 1)
    cmd = [topaz, "train", "-n", str(n_per), "--num-workers", "0", "--train-images", str(tr_root / "micrographs"),
           "--train-targets", str(work / "train_targets.txt"), "--radius", str(radius), "--num-epochs", str(epochs),
           "--epoch-size", str(epoch_size), "--save-prefix", str(work / "model"), "-o", str(work / "train_log.txt"),
           "--device", "-1"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    t_train = time.perf_counter() - t0
    model = sorted(work.glob("model_epoch*.sav"), key=lambda p: int(p.stem.split("epoch")[-1]))[-1]
    subprocess.run([topaz, "extract", "-r", str(radius), "-m", str(model), "-o", str(work / "predicted.txt"),
                    "--device", "-1", *map(str, sorted((te_root / "micrographs").glob("*.mrc")))],
                   check=True, capture_output=True, text=True)
    picks = read_topaz(work / "predicted.txt", allow_empty=True)
    picks["micrograph"] = picks["micrograph"].astype(str) + ".mrc"
    fdt, ttruth, _ = te
    names = [f"{n}.mrc" for n in fdt.names]
    r = score(picks[picks["score"] >= 0], ttruth, names, diameter)
    r["ap"] = score(picks, ttruth, names, diameter)["ap"]
    return [dict(method="Topaz (resnet8, its CLI, threshold 0)", train_s=t_train, **r)]


def markdown_table(df: pd.DataFrame) -> str:
    "A markdown table of `df` (floats to 3 decimals), without the optional `tabulate` package."
    fmt = lambda v: ("–" if v != v else f"{v:.3f}") if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "|".join(["---"] * len(df.columns)) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="micrograph size in px (default 1024)")
    ap.add_argument("--snrs", default="0.1,0.05,0.01")
    ap.add_argument("--junk", choices=("off", "on", "both"), default="off", help="ice gradient + contaminants")
    ap.add_argument("--n-train", type=int, default=8); ap.add_argument("--n-val", type=int, default=2)
    ap.add_argument("--n-test", type=int, default=4)
    ap.add_argument("--particles-per-mpx", type=float, default=60.0, help="particles per 1024² of micrograph")
    ap.add_argument("--epochs", type=int, default=12); ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--models", default="unet", help="comma-separated: unet, fcn_resnet50, deeplabv3_resnet50")
    ap.add_argument("--topaz-bin", default=shutil.which("topaz"), help="the topaz executable (default: on PATH)")
    ap.add_argument("--topaz-epochs", type=int, default=10)
    ap.add_argument("--topaz-epoch-size", type=int, default=1000, help="Topaz minibatches per epoch (its default 1000)")
    ap.add_argument("--quick", action="store_true", help="256² micrographs, SNR 0.1 and 0.05, few epochs")
    ap.add_argument("--device", default=None); ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0); ap.add_argument("--out", default=None, help="markdown snippet path")
    ap.add_argument("--work", default=None, help="keep the data here (default: a temporary folder)")
    a = ap.parse_args()
    if a.quick:
        a.size, a.snrs, a.n_train, a.n_val, a.n_test, a.epochs = 256, "0.1,0.05", 6, 1, 3, 8
        a.topaz_epochs, a.topaz_epoch_size = 5, 200
    if a.threads: torch.set_num_threads(a.threads)
    from cryoseg.core import get_device
    from cryoseg.simulate import SimConfig
    from cryoseg.volumes import make_volume
    device = str(get_device(a.device))
    m = machine_info()
    head = (f"Machine: {m['host']}, {m['cpu_cores']} CPU cores, torch {m['torch']} ({torch.get_num_threads()} threads), "
            f"GPU: {m['gpu'] or 'none'}; device {device}; load average at start "
            + " ".join(f"{x:.1f}" for x in os.getloadavg()) + ".")
    print(head, flush=True)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="cryoseg-quality-"))
    n_particles = max(int(a.particles_per_mpx * (a.size / 1024) ** 2), 4) if a.size >= 1024 else 15
    rows = []
    for snr in map(float, a.snrs.split(",")):
        for junk in (("off", "on") if a.junk == "both" else (a.junk,)):
            extra = dict(ice_gradient=0.3, n_contaminants=max(2, n_particles // 15)) if junk == "on" else {}
            cfg = SimConfig(shape=(a.size, a.size), snr=snr, n_particles=n_particles, **extra)
            tag = f"snr{snr}_junk{junk}"
            roots = {s: simulate_split(work / tag / s, n, cfg, a.seed + 1000 * k)
                     for k, (s, n) in enumerate(dict(train=a.n_train, val=a.n_val, test=a.n_test).items())}
            tr, va, te = (load_split(roots[s]) for s in ("train", "val", "test"))
            diameter = float(np.nanmedian(te[1]["diameter_px"]))
            volume = make_volume(cfg.volume_kind, cfg.box_size, cfg.pixel_size_a, cfg.diameter_a, cfg.volume_seed)
            found = []
            for name in a.models.split(","):
                found += run_network(name, tr, va, te, diameter, a.epochs, work / tag, device, a.crop)
            found += run_baselines(te, diameter, volume)
            if a.topaz_bin:
                try:
                    found += run_topaz(a.topaz_bin, roots["train"], roots["test"], tr, te, diameter, a.topaz_epochs,
                                       work / tag / "topaz", a.topaz_epoch_size)
                except (subprocess.CalledProcessError, OSError, IndexError) as e:
                    msg = getattr(e, "stderr", "") or str(e)
                    print(f"Topaz failed at SNR {snr}: {msg.strip().splitlines()[-1] if msg.strip() else e}", flush=True)
            for r in found:
                r.update(snr=snr, junk=junk)
                print(json.dumps(r), flush=True)
            rows += found
    df = pd.DataFrame(rows)
    cols = ["snr", "junk", "method", "pixel_precision", "pixel_recall", "pixel_iou", "precision", "recall", "f1", "ap", "n_picks"]
    df = df[[c for c in cols if c in df.columns]]
    text = "\n".join(["### Picking quality on the seeded synthetic benchmark (`bench/quality.py`)", "", head, "",
                      f"{a.size}² micrographs at 4 Å/px, {n_particles} particles each, train/val/test = "
                      f"{a.n_train}/{a.n_val}/{a.n_test} micrographs, {a.epochs} epochs; picks matched one-to-one within "
                      "0.5 × diameter; pixel scores at P > 0.5 against the exact footprints.", "",
                      markdown_table(df), ""])
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()

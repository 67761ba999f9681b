"""Picking quality against peers on a fixed, seeded synthetic benchmark.

For each condition, an SNR (Gaussian noise; `--snrs`) or a dose (shot noise with the phase derived from
the potential; `--doses`, e⁻/Å²), and ice/junk off or on, the same seeded train/val/test micrographs are
simulated; then
  * U-Net (default), and with --models also FCN-ResNet50 / DeepLabv3-ResNet50 (slow on a CPU),
    each without CRF, with pydensecrf2 and with the torch CRF;
  * the blob picker (LoG) and NCC template matching with 24 CTF-free random views of the true volume
    at a fixed threshold (a classical picker, not a bound);
  * the ideal observer (`cryoseg.baselines.ideal_observer_picks`, the Bayes observer: likelihood ratios
    averaged over its signals): the matched filter with every particle's true view, CTF and detector (the
    bound no picker beats in expectation), and with --ideal-views random views of the true volume (what
    knowing the molecule but not the views allows; converged by ~1000 views at SNR 0.05);
  * Topaz (`pip install topaz-em`), trained through its own CLI on the same training micrographs and
    coordinates, when a `topaz` executable is found (--topaz-bin), evaluated with cryoseg's rule;
are scored on the test micrographs: pixel precision/recall/IoU (where there is a map) and picking
precision/recall/F1 at each picker's own threshold, the best F1 along its precision–recall curve and AP,
matched one-to-one within 0.5 × diameter (the networks' AP and best F1 over their picks at P > --rank-threshold,
the ideal observer's over every local maximum), with 95 % bootstrap intervals over test micrographs for F1
and AP, and how far each picker is behind the true-view ideal observer on the same micrographs (F1, best F1, AP),
with a paired bootstrap interval. Each condition states its SNR fully (`cryoseg.simulate.snr_report`, mean over the test
micrographs): the footprint SNR per pixel at the pixel size, the matched filter's d′ and the equivalent
dose. Prints the machine and a markdown snippet for BENCHMARKS.md.

    OMP_NUM_THREADS=2 python bench/quality.py --quick                  # minutes on a 2-core CPU
    python bench/quality.py --size 1024 --snrs 0.1,0.05,0.01 --doses 10,20,40 --junk both --epochs 30 --models unet,fcn_resnet50,deeplabv3_resnet50
    python bench/quality.py --topaz-bin /path/to/venv/bin/topaz         # add Topaz
    python bench/quality.py --size 192 --n-particles 6 --snrs 0.1 --doses 20 --n-train 2 --n-val 1 --n-test 2 \
        --epochs 1 --crop 64 --bootstrap 50 --ideal-views 8 --topaz-bin ""      # end-to-end check, ~1 min
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


def simulate_results(n: int, cfg, seed: int, volume) -> list:
    """The SimResults `simulate_dataset(root, n, cfg, volume, seed)` writes, in memory (same seeds: micrograph i
    uses the i-th child of SeedSequence(seed)), for the observers that need the truth (the ideal observer)."""
    from cryoseg.simulate import _dataset_micrographs      # the dataset's own seeding rule, not a copy of it
    return [r for _, r in _dataset_micrographs(volume, cfg, seed, n, device="cpu")]


def load_split(root: Path):
    from cryoseg.data import load_folder
    from cryoseg.coords import read_particles
    from cryoseg.io import read_mask
    fd = load_folder(root)
    truth = pd.concat([read_particles(root / "coordinates" / f"{n}.star", allow_empty=True).assign(micrograph=f"{n}.mrc")
                       for n in fd.names], ignore_index=True)
    junk = [read_mask(root / "junk" / f"{n}.mrc") for n in fd.names]
    return fd, truth, junk


N_BOOT = 1000
N_THRESHOLDS = 10**6    # precision-recall curves at every distinct score: exact best F1 and AP. pr_curve's default 50
                        # quantiles put few thresholds where an observer that ranks thousands of noise maxima has its best F1


def score(picks, truth, names, diameter, preds=None, targets=None, n_boot: int = N_BOOT) -> dict:
    "Picking scores with 95 % bootstrap intervals over micrographs (`cryoseg.metrics.picking_intervals`), pixel scores."
    from cryoseg.metrics import picking_intervals, picking_metrics, pixel_metrics, pr_curve
    m = picking_metrics(picks, truth, diameter, micrographs=names)
    iv = picking_intervals(picks, truth, diameter, n_boot=n_boot, micrographs=names, n_thresholds=N_THRESHOLDS)
    curve = pr_curve(picks, truth, diameter, micrographs=names, n_thresholds=N_THRESHOLDS)
    f1_best = float(curve["f1"].max()) if len(curve) else m["f1"]
    row = dict(precision=m["precision"], recall=m["recall"], f1=m["f1"], f1_best=f1_best, n_picks=m["n_picks"],
               ap=iv["ap"], f1_lo=iv["f1_lo"], f1_hi=iv["f1_hi"], ap_lo=iv["ap_lo"], ap_hi=iv["ap_hi"])
    assert abs(iv["f1"] - m["f1"]) < 1e-12, (iv["f1"], m["f1"])
    if preds is not None:
        px = pixel_metrics(preds, targets)
        row.update(pixel_precision=px["precision"], pixel_recall=px["recall"], pixel_iou=px["iou"])
    return row


def score_ranked(own, every, truth, names, diameter, n_boot, preds=None, targets=None) -> dict:
    """Precision, recall and F1 of a picker's `own` picks (at its own threshold), and its AP and best F1 over `every`
    candidate it ranks, so that its precision-recall curve is not cut at its own threshold."""
    ranked = score(every, truth, names, diameter, n_boot=n_boot)
    row = score(own, truth, names, diameter, preds, targets, n_boot=n_boot)
    row.update({k: ranked[k] for k in ("ap", "ap_lo", "ap_hi")})
    row["f1_best"] = max(ranked["f1_best"], row["f1"])      # a network's own picks are not a cut of its candidates
    row["_tables"] = (own, every)                           # for `add_gaps`; dropped before printing
    return row


def run_network(name, tr, va, te, diameter, epochs, out: Path, device, crop, n_boot, stream=None, crfs=("none", "pydensecrf", "torch"),
                tta: str = "none", model_kwargs: dict | None = None, rank_threshold: float = 0.01,
                flipped: dict | None = None, dice_weight: float = 1.0) -> list[dict]:
    """Train `name` on the fixed training micrographs `tr` (or, with `stream=(cfg, n_micrographs, samples, seed)`, on
    fresh simulations every epoch: `cryoseg.data.SimulatedDataset`) and score it with each CRF of `crfs`: F1 of its
    picks at P > 0.5, AP and best F1 over its picks at P > `rank_threshold`. `flipped`: the splits' micrographs
    phase-flipped (`flipped_splits`; the streamed training flips its own), to train and predict on instead;
    `dice_weight`: the soft Dice term of the loss (0: cross-entropy alone)."""
    from cryoseg.train import TrainConfig, fit
    from cryoseg.predict import predict_tiled
    from cryoseg.crf import crf_tiled
    from cryoseg.pick import pick_particles
    fdt, truth, _ = te
    cfg = TrainConfig(model=name, epochs=epochs, crop_size=crop, out_dir=str(out / name), overwrite=True,
                      progress=False, device=device, model_kwargs=dict(model_kwargs or {}), dice_weight=dice_weight)
    images = {**dict(train=tr[0].images, val=va[0].images, test=fdt.images), **(flipped or {})}
    t0 = time.perf_counter()
    if stream is None:
        train = (images["train"], tr[0].masks)
    else:
        from cryoseg.data import SimulatedDataset
        sim_cfg, n_mic, samples, seed = stream
        train = SimulatedDataset(sim_cfg, n_micrographs=n_mic, crop_size=crop, length=samples, seed=seed,
                                 phase_flip=flipped is not None)
    res = fit(cfg, train, (images["val"], va[0].masks))
    t_train = time.perf_counter() - t0
    rows = []
    names = [f"{n}.mrc" for n in fdt.names]
    for crf in crfs:
        picks, every, preds = [], [], []
        for img, n in zip(images["test"], names):
            p = predict_tiled(res["model"], img, device=device, tta=tta)
            if crf != "none":
                p = crf_tiled(p, img, method=crf, device=device if crf == "torch" else None)
            preds.append(p > 0.5)
            picks.append(pick_particles(p, diameter, micrograph=n))
            every.append(pick_particles(p, diameter, threshold=rank_threshold, micrograph=n))
        r = score_ranked(pd.concat(picks, ignore_index=True), pd.concat(every, ignore_index=True), truth, names,
                         diameter, n_boot, preds, fdt.masks)
        what = (f"{name}" + (f" {json.dumps(model_kwargs)}" if model_kwargs else "")
                + (" (fresh simulations every epoch)" if stream else "") + ("" if tta == "none" else f", {tta} TTA")
                + (", phase-flipped" if flipped is not None else "")
                + ("" if dice_weight == 1 else ", cross-entropy loss" if dice_weight == 0 else f", Dice weight {dice_weight:g}"))
        rows.append(dict(method=what + ("" if crf == "none" else f" + CRF ({crf})"), train_s=t_train, **r))
    return rows


def run_baselines(te, diameter, volume, n_boot) -> list[dict]:
    from cryoseg.baselines import blob_picker, template_picker
    from cryoseg.projection import project, random_rotations
    fdt, truth, _ = te
    names = [f"{n}.mrc" for n in fdt.names]
    blob = pd.concat([blob_picker(im, diameter, micrograph=n) for im, n in zip(fdt.images, names)], ignore_index=True)
    templates = project(volume, random_rotations(24, seed=0))
    tm = pd.concat([template_picker(im, templates, diameter, micrograph=n) for im, n in zip(fdt.images, names)],
                   ignore_index=True)
    return [dict(method="blob picker (LoG)", **score(blob, truth, names, diameter, n_boot=n_boot), _tables=(blob, blob)),
            dict(method="template matching (NCC, 24 CTF-free views of the true volume, threshold 4σ)",
                 **score(tm, truth, names, diameter, n_boot=n_boot), _tables=(tm, tm))]


def ideal_scores(results, names, truth, diameter, volume, views: str, n_views: int, n_boot,
                 combine: str = "mean") -> dict:
    """Scores of one ideal observer (`ideal_observer_picks` with `views`, `n_views`, `combine`) on the SimResults
    `results` (micrographs `names`). Its own picks are those above the log prior odds (precision, recall, F1 there);
    its ranking (AP, best F1) is over every spaced local maximum of its log-likelihood ratio, so that its
    precision-recall curve is not cut at its own threshold (at low SNR that threshold keeps few picks)."""
    from cryoseg.baselines import ideal_observer_picks, log_prior_odds
    every = [ideal_observer_picks(r, volume, views=views, n_views=n_views, micrograph=n, threshold=-np.inf,
                                  combine=combine) for r, n in zip(results, names)]
    own = pd.concat([e[e["score"] > log_prior_odds(r)] for e, r in zip(every, results)], ignore_index=True)
    return score_ranked(own, pd.concat(every, ignore_index=True), truth, names, diameter, n_boot)


def run_ideal(results, te, diameter, volume, n_views: int, n_boot) -> list[dict]:
    """The ideal observer on the test micrographs (`ideal_scores`): the matched filter's likelihood ratios averaged
    over every particle's true view and CTF (the Bayes observer), and over `n_views` random views of the true volume."""
    fdt, truth, _ = te
    names = [f"{n}.mrc" for n in fdt.names]
    return [dict(method=label, **ideal_scores(results, names, truth, diameter, volume, views, n_views, n_boot))
            for views, label in (("true", "ideal observer (true views + CTF)"),
                                 ("random", f"ideal observer ({n_views} random views + CTF)"))]


def flipped_splits(roots: dict, volume, splits, known: dict) -> dict:
    """The micrographs of each split named in `splits` phase-flipped with their own CTF (`cryoseg.data.flipped_image`) of
    the SimResults `simulate_dataset` wrote in `roots[split]`: those in `known` (split: SimResults), the others
    simulated again and checked against the files (`cryoseg.simulate.dataset_results`)."""
    from cryoseg.data import flipped_image
    from cryoseg.simulate import dataset_results
    out = {}
    for s in splits:
        results = known.get(s) or dataset_results(roots[s], volume)
        out[s] = [flipped_image(r) for r in results]
    return out


def snr_summary(results, volume) -> dict:
    "The SNR of a condition, stated fully (`snr_report`), averaged over its test micrographs."
    from cryoseg.simulate import snr_report
    reps = [snr_report(r, volume) for r in results]
    mean = lambda k: float(np.mean([rp[k] for rp in reps]))
    return dict(snr_fp=mean("snr_footprint"), snr_img=mean("snr_image"), snr_aspire=mean("snr_aspire"),
                dprime=mean("dprime_mean"), dose_eq=mean("dose_equivalent_e_a2"))


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
    r = score_ranked(picks[picks["score"] >= 0], picks, ttruth, names, diameter, N_BOOT)
    return [dict(method="Topaz (resnet8, its CLI, threshold 0)", train_s=t_train, **r)]


TRUE_VIEW = "ideal observer (true views + CTF)"
GAPS = ("gap_f1", "gap_f1_best", "gap_ap")


def add_gaps(rows: list[dict], truth, names, diameter, n_boot) -> list[dict]:
    """Each picker's distance behind the true-view ideal observer on the same test micrographs, with a paired
    bootstrap interval (`cryoseg.metrics.picking_gap`, observer minus picker): `gap_f1` at the two pickers' own
    thresholds, `gap_f1_best` and `gap_ap` over every candidate each ranks. The pickers' tables are then dropped."""
    from cryoseg.metrics import picking_gap
    ref = next((r["_tables"] for r in rows if r["method"] == TRUE_VIEW), None)
    for r in rows:
        own, every = r.pop("_tables")
        if ref is None or r["method"] == TRUE_VIEW:
            continue
        g_own = picking_gap(ref[0], own, truth, diameter, n_boot=n_boot, micrographs=names, n_thresholds=N_THRESHOLDS)
        g_every = picking_gap(ref[1], every, truth, diameter, n_boot=n_boot, micrographs=names, n_thresholds=N_THRESHOLDS)
        for key, g, k in (("gap_f1", g_own, "f1"), ("gap_f1_best", g_every, "f1_best"), ("gap_ap", g_every, "ap")):
            r.update({key: g[k], f"{key}_lo": g[f"{k}_lo"], f"{key}_hi": g[f"{k}_hi"]})
    return rows


def with_intervals(df: pd.DataFrame) -> pd.DataFrame:
    "F1 and AP as 'value [lo, hi]' strings (95 % bootstrap intervals); the interval columns dropped."
    df = df.copy()
    for k in ("f1", "ap", *GAPS):
        if {k, f"{k}_lo", f"{k}_hi"} <= set(df.columns):
            w = 3 if k in GAPS else 2                   # a gap's interval is narrow: its third decimal tells
            df[k] = [f"{v:.3f} [{lo:.{w}f}, {hi:.{w}f}]" if v == v else "–"
                     for v, lo, hi in zip(df[k], df[f"{k}_lo"], df[f"{k}_hi"])]
            df = df.drop(columns=[f"{k}_lo", f"{k}_hi"])
    return df


def markdown_table(df: pd.DataFrame) -> str:
    "A markdown table of `df` (floats to 3 decimals), without the optional `tabulate` package."
    fmt = lambda v: ("–" if v != v else f"{v:.3g}" if abs(v) >= 100 else f"{v:.3f}") if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "|".join(["---"] * len(df.columns)) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="micrograph size in px (default 1024)")
    ap.add_argument("--snrs", default="0.1,0.05,0.01", help="footprint SNRs with Gaussian noise ('' for none)")
    ap.add_argument("--doses", default="10,20,40", help="doses in e⁻/Å² with shot noise and the physical phase ('' for none)")
    ap.add_argument("--junk", choices=("off", "on", "both"), default="off", help="ice gradient + contaminants")
    ap.add_argument("--n-train", type=int, default=8); ap.add_argument("--n-val", type=int, default=2)
    ap.add_argument("--n-test", type=int, default=16,
                    help="test micrographs (default 16: 960 particles at 1024², enough to tell gaps of 0.01–0.02 apart)")
    ap.add_argument("--particles-per-mpx", type=float, default=60.0, help="particles per 1024² of micrograph")
    ap.add_argument("--n-particles", type=int, default=None, help="particles per micrograph (overrides the density)")
    ap.add_argument("--ideal-views", type=int, default=1000,
                    help="random views of the random-view ideal observer (default 1000; ~30 s per test micrograph of 1024²)")
    ap.add_argument("--bootstrap", type=int, default=N_BOOT, help="bootstrap resamplings for the 95 %% intervals")
    ap.add_argument("--epochs", type=int, default=12); ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--models", default="unet", help="comma-separated: unet, fcn_resnet50, deeplabv3_resnet50 ('': none, the baselines and ideal observer only)")
    ap.add_argument("--model-kwargs", type=json.loads, default=None, metavar="JSON",
                    help='passed to the networks\' constructor, e.g. \'{"width": 32}\' (default: the package\'s defaults)')
    ap.add_argument("--topaz-bin", default=shutil.which("topaz"), help="the topaz executable (default: on PATH)")
    ap.add_argument("--topaz-epochs", type=int, default=10)
    ap.add_argument("--topaz-epoch-size", type=int, default=1000, help="Topaz minibatches per epoch (its default 1000)")
    ap.add_argument("--quick", action="store_true", help="256² micrographs, SNR 0.1 and 0.05, few epochs")
    ap.add_argument("--stream", action="store_true",
                    help="train on fresh simulated micrographs every epoch (n-train of them) instead of a fixed set")
    ap.add_argument("--samples-per-epoch", type=int, default=128, help="training crops per epoch with --stream")
    ap.add_argument("--no-crf", action="store_true", help="skip the CRF rows")
    ap.add_argument("--rank-threshold", type=float, default=0.01,
                    help="the networks' AP and best F1 rank their picks at P > this (default 0.01); F1 at P > 0.5")
    ap.add_argument("--dice-weight", type=float, default=1.0,
                    help="weight of the soft Dice term of the networks' loss (default 1, cryoseg's; 0: cross-entropy alone)")
    ap.add_argument("--phase-flip", action="store_true",
                    help="phase-flip every micrograph with its own CTF before the networks see it (cryoseg.ctf.phase_flip)")
    ap.add_argument("--tta", default="none", help="test-time symmetry of the network rows: none, rot180, dihedral")
    ap.add_argument("--device", default=None); ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0); ap.add_argument("--out", default=None, help="markdown snippet path")
    ap.add_argument("--work", default=None, help="keep the data here (default: a temporary folder)")
    a = ap.parse_args()
    if a.quick:
        a.size, a.snrs, a.doses, a.n_train, a.n_val, a.n_test, a.epochs = 256, "0.1,0.05", "20", 6, 1, 3, 8
        a.topaz_epochs, a.topaz_epoch_size = 5, 200
    if a.threads: torch.set_num_threads(a.threads)
    from cryoseg.core import get_device
    from cryoseg.simulate import SimConfig, dataset_results
    from cryoseg.volumes import make_volume
    device = str(get_device(a.device))
    m = machine_info()
    head = (f"Machine: {m['host']}, {m['cpu_cores']} CPU cores, torch {m['torch']} ({torch.get_num_threads()} threads), "
            f"GPU: {m['gpu'] or 'none'}; device {device}; load average at start "
            + " ".join(f"{x:.1f}" for x in os.getloadavg()) + ".")
    print(head, flush=True)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="cryoseg-quality-"))
    n_particles = (a.n_particles if a.n_particles is not None else
                   max(int(a.particles_per_mpx * (a.size / 1024) ** 2), 4) if a.size >= 1024 else 15)
    conditions = [("snr", float(v)) for v in a.snrs.split(",") if v.strip()]
    conditions += [("dose", float(v)) for v in a.doses.split(",") if v.strip()]
    rows = []
    for kind, value in conditions:
        for junk in (("off", "on") if a.junk == "both" else (a.junk,)):
            extra = dict(ice_gradient=0.3, n_contaminants=max(2, n_particles // 15)) if junk == "on" else {}
            noise = dict(snr=value) if kind == "snr" else dict(noise="shot", dose_e_a2=value)
            cfg = SimConfig(shape=(a.size, a.size), n_particles=n_particles, **noise, **extra)
            tag = f"{kind}{value}_junk{junk}"
            label = f"SNR {value:g}" if kind == "snr" else f"{value:g} e⁻/Å²"
            seeds = dict(train=a.seed, val=a.seed + 1000, test=a.seed + 2000)
            roots = {s: simulate_split(work / tag / s, n, cfg, seeds[s])
                     for s, n in dict(train=a.n_train, val=a.n_val, test=a.n_test).items()}
            tr, va, te = (load_split(roots[s]) for s in ("train", "val", "test"))
            diameter = float(np.nanmedian(te[1]["diameter_px"]))
            volume = make_volume(cfg.volume_kind, cfg.box_size, cfg.pixel_size_a, cfg.diameter_a, cfg.volume_seed)
            results = dataset_results(roots["test"], volume)    # the truth behind the files, checked against them
            summary = snr_summary(results, volume)
            print(json.dumps(dict(condition=label, junk=junk, **summary)), flush=True)
            found = []
            splits = ("val", "test") if a.stream else ("train", "val", "test")   # streaming flips its own
            flipped = flipped_splits(roots, volume, splits, dict(test=results)) if a.phase_flip else None
            for name in [m for m in a.models.split(",") if m]:       # --models '': no network rows
                stream = (cfg, a.n_train, a.samples_per_epoch, a.seed + 5000) if a.stream else None
                found += run_network(name, tr, va, te, diameter, a.epochs, work / tag, device, a.crop, a.bootstrap,
                                     stream, ("none",) if a.no_crf else ("none", "pydensecrf", "torch"), a.tta,
                                     a.model_kwargs, a.rank_threshold, flipped, a.dice_weight)
            found += run_baselines(te, diameter, volume, a.bootstrap)
            found += run_ideal(results, te, diameter, volume, a.ideal_views, a.bootstrap)
            if a.topaz_bin:
                try:
                    found += run_topaz(a.topaz_bin, roots["train"], roots["test"], tr, te, diameter, a.topaz_epochs,
                                       work / tag / "topaz", a.topaz_epoch_size)
                except (subprocess.CalledProcessError, OSError, IndexError) as e:
                    msg = getattr(e, "stderr", "") or str(e)
                    print(f"Topaz failed at {label}: {msg.strip().splitlines()[-1] if msg.strip() else e}", flush=True)
            add_gaps(found, te[1], [f"{n}.mrc" for n in te[0].names], diameter, a.bootstrap)
            for r in found:
                r.update(condition=label, junk=junk, **summary)
                print(json.dumps(r), flush=True)
            rows += found
    df = pd.DataFrame(rows)
    cols = ["condition", "junk", "snr_fp", "dprime", "dose_eq", "method", "pixel_precision", "pixel_recall", "pixel_iou",
            "precision", "recall", "f1", "f1_lo", "f1_hi", "f1_best", "ap", "ap_lo", "ap_hi", "n_picks",
            *[f"{g}{s}" for g in GAPS for s in ("", "_lo", "_hi")]]
    df = with_intervals(df[[c for c in cols if c in df.columns]])
    text = "\n".join(["### Picking quality on the seeded synthetic benchmark (`bench/quality.py`)", "", head, "",
                      f"{a.size}² micrographs at 4 Å/px, {n_particles} particles each, train/val/test = "
                      f"{a.n_train}/{a.n_val}/{a.n_test} micrographs, {a.epochs} epochs; picks matched one-to-one within "
                      "0.5 × diameter; pixel scores at P > 0.5 against the exact footprints. `snr_fp`: the footprint SNR "
                      "per pixel at 4 Å/px (var of the CTF-modulated particle contrast over the footprints / white-noise "
                      "variance), `dprime`: the true-view matched filter's detectability sqrt(Σ signal²/σ²), `dose_eq`: the "
                      "dose in e⁻/Å² whose shot noise gives that SNR with the phase derived from the potential (means over "
                      "the test micrographs; `cryoseg.simulate.snr_report`). F1 at each picker's own threshold (the ideal "
                      "observer's: the log prior odds; the networks': P > 0.5), `f1_best` and AP along the PR curve (at every distinct score) of every "
                      f"candidate it ranks (the ideal observer: every local maximum; the networks: picks at P > "
                      f"{a.rank_threshold:g}){'; networks on phase-flipped micrographs' if a.phase_flip else ''}; [95 % "
                      "bootstrap interval over the "
                      f"{a.n_test} test micrographs, {a.bootstrap} resamplings]. No picker beats the true-view ideal "
                      "observer in expectation. `gap_f1`, `gap_f1_best`, `gap_ap`: how far each picker is behind it "
                      "(observer minus picker, at their own thresholds / best F1 / AP) on the same micrographs, with a "
                      "paired bootstrap interval (`cryoseg.metrics.picking_gap`).", "",
                      markdown_table(df), ""])
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()

"""The real-data benchmark: the EMPIAR-10028 / CryoPPP sample shipped in data/empiar10028-cryoppp.

Run: OMP_NUM_THREADS=2 python bench/real.py [--bin 2] [--epochs 12] [--width 16] ... [--out bench/out/real]

What it does (all on the sample's fixed split; nothing is tuned on the test micrographs):
  * micrographs, masks and expert centres are binned by `--bin` (Fourier crop; 1024² -> 512² at bin 2);
  * the default U-Net is trained on `train` (4 micrographs); `valid` (1) chooses the best epoch and every
    picking threshold below (the one that maximises F1 on it);
  * the 5 `test` micrographs are predicted and picked five ways: the U-Net; the U-Net with test-time
    symmetry (`tta="rot180"`, the map averaged with that of the micrograph turned by 180°: `cryoseg predict`'s
    default); the U-Net + dense CRF (picks
    and scores from the CRF map); the CRF's picks with the U-Net's scores (mean network probability over
    a disc of d/4 at each pick: same picks and F1 as the CRF row, another ranking, so another AP); and
    the blob (LoG) picker. The U-Net's and the CRF's segmentation threshold, and the blob picker's score
    threshold, are the ones with the best F1 on `valid`; all picks above them count;
  * Topaz (train + extract, its own CLI) when the `topaz` command is installed; skipped with a message
    otherwise;
  * every picker drops picks closer than half a diameter to the border: the experts labelled no particle
    whose disc crosses it (checked on the training labels);
  * scores against the expert labels in the original 1024² frame: pixel IoU/F1 (binned frame), picking
    precision/recall/F1 within 0.5 and 0.25 of the diameter, AP (area under the precision-recall curve
    over the pick score) and the mean centre error of matched picks in px and Å.
The labels are incomplete (see PROVENANCE.md): precision, F1 and AP are lower bounds; compare rows with
each other. Prints a markdown table with the machine; `--out` also writes results.json and table.md."""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", type=float, default=2.0, help="bin factor from the 1024² sample (default 2: 10.7 Å/px)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--samples-per-epoch", type=int, default=256)
    ap.add_argument("--crop", type=int, default=96, help="training crop side in binned pixels")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--width", type=int, default=16, help="U-Net width (default: the package default, 16)")
    ap.add_argument("--depth", type=int, default=3, help="U-Net depth (default: the package default, 3)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all usable cores)")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: CUDA when present)")
    ap.add_argument("--root", default=None, help="a copy of data/empiar10028-cryoppp (default: the repository's)")
    ap.add_argument("--no-crf", action="store_true", help="skip the CRF rows")
    ap.add_argument("--out", default=None, help="folder for results.json and table.md")
    return ap.parse_args(argv)


def binned(sample, factor):
    "Each micrograph binned by `factor`: dict(name, image, mask, truth (binned frame), truth_full, shape_full)."
    from cryoseg.particles import scale_particles
    from cryoseg.preprocess import downsample
    out = []
    for r in sample:
        img, mask, px = downsample(r.image, r.mask, factor=factor, pixel_size_a=r.pixel_size_a)
        out.append(dict(name=r.name, micrograph=f"{r.name}.png", image=img, mask=mask, pixel_size_a=px,
                        truth=scale_particles(r.particles, r.image.shape, img.shape), truth_full=r.particles,
                        shape_full=r.image.shape))
    return out


def to_full(picks, m):
    "Picks in the binned frame of micrograph `m` -> the original 1024² frame, named after the original file."
    from cryoseg.particles import scale_particles
    p = scale_particles(picks, m["image"].shape, m["shape_full"])
    return p.assign(micrograph=m["micrograph"])


def scores(picks_full, mics, d_full, px_full, thr=None):
    "Picking scores in the original frame: P/R/F1 at 0.5 d and F1 at 0.25 d (score >= thr), AP, centre error."
    from cryoseg.metrics import average_precision, picking_metrics
    truth = pd.concat([m["truth_full"] for m in mics], ignore_index=True)
    names = [m["micrograph"] for m in mics]
    p = picks_full if thr is None else picks_full[picks_full["score"] >= thr]
    m5 = picking_metrics(p, truth, d_full, frac=0.5, pixel_size_a=px_full, micrographs=names)
    m25 = picking_metrics(p, truth, d_full, frac=0.25, micrographs=names)
    ap = average_precision(picks_full, truth, d_full, micrographs=names) if len(picks_full) else 0.0
    return dict(precision=m5["precision"], recall=m5["recall"], f1=m5["f1"], f1_quarter_d=m25["f1"], ap=ap,
                n_picks=m5["n_picks"], n_true=m5["n_true"], centre_error_px=m5["mean_error_px"],
                centre_error_a=m5["mean_error_a"])


def best_threshold(picks_full, mics, d_full, candidates=None):
    "The score threshold that maximises F1 (0.5 d) on `mics` (validation), from the PR curve."
    from cryoseg.metrics import pr_curve
    truth = pd.concat([m["truth_full"] for m in mics], ignore_index=True)
    if len(picks_full) == 0:
        return 0.0
    c = pr_curve(picks_full, truth, d_full, thresholds=candidates, micrographs=[m["micrograph"] for m in mics])
    return float(c.loc[c["f1"].idxmax(), "threshold"])


def pick_all(probs, mics, d_bin, threshold, score_prob=None):
    """`pick_particles` on each probability map (segmentation `threshold`), in the original frame; with
    `score_prob`, each pick is re-scored by the mean of that map over a disc of d/4 around its centre."""
    from cryoseg.pick import pick_particles
    rows = []
    for prob, m, sp in zip(probs, mics, score_prob or [None] * len(mics)):
        p = pick_particles(prob, d_bin, threshold=threshold, edge_px=d_bin / 2, micrograph=m["micrograph"])
        if sp is not None and len(p):
            p = p.assign(score=[disc_mean(sp, x, y, d_bin / 4) for x, y in zip(p.x, p.y)])
        rows.append(to_full(p, m))
    return pd.concat(rows, ignore_index=True)


def disc_mean(a, x, y, r):
    "Mean of `a` over the pixels within `r` of (x, y)."
    H, W = a.shape
    y0, y1, x0, x1 = max(int(y - r), 0), min(int(y + r) + 2, H), max(int(x - r), 0), min(int(x + r) + 2, W)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    sel = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
    return float(a[y0:y1, x0:x1][sel].mean()) if sel.any() else float(a[int(round(y)), int(round(x))])


def calibrated_picks(probs_val, val, probs_test, test, d_bin, d_full, score_val=None, score_test=None):
    """The segmentation threshold (0.3..0.7) with the best F1 on validation; every pick above it is kept
    (a second, score threshold tuned on one validation micrograph overfits it). Returns (test picks in the
    original frame, segmentation threshold, None)."""
    f1 = {t: scores(pick_all(probs_val, val, d_bin, t, score_val), val, d_full, None)["f1"]
          for t in (0.3, 0.4, 0.5, 0.6, 0.7)}
    t = max(f1, key=f1.get)
    return pick_all(probs_test, test, d_bin, t, score_test), t, None


def pixel_row(probs, mics, threshold):
    from cryoseg.metrics import pixel_metrics
    m = pixel_metrics([p > threshold for p in probs], [m["mask"] for m in mics])
    return dict(pixel_iou=m["iou"], pixel_f1=m["f1"])


def blob_rows(val, test, d_bin, d_full):
    "The LoG blob picker, its threshold (robust z) calibrated on validation."
    from cryoseg.baselines import blob_picker
    pk = lambda mics: pd.concat([to_full(blob_picker(m["image"], d_bin, threshold=0.0, edge_px=d_bin / 2,
                                                     micrograph=m["micrograph"]), m) for m in mics], ignore_index=True)
    s = best_threshold(pk(val), val, d_full)
    return pk(test), s


def topaz_row(train, val, test, d_bin, workdir):
    "Topaz through its own CLI (train on the training micrographs' expert centres, extract on test); None if absent."
    exe = shutil.which("topaz")
    if exe is None:
        print("Topaz: the `topaz` command is not installed: row skipped (pip install topaz-em to include it)")
        return None
    from cryoseg.coords import read_particles, write_particles
    from cryoseg.io import write_micrograph
    w = Path(workdir) / "topaz"
    for split, mics in (("train", train + val), ("test", test)):
        for m in mics:
            write_micrograph(w / split / f"{m['name']}.mrc", m["image"], m["pixel_size_a"], overwrite=True)
    coords = pd.concat([m["truth"].assign(micrograph=m["name"]) for m in train + val], ignore_index=True)
    write_particles(w / "train.txt", coords, fmt="topaz", overwrite=True)
    r = max(1, int(round(d_bin / 2)))
    cmds = [[exe, "train", "--train-images", str(w / "train"), "--train-targets", str(w / "train.txt"),
             "--radius", "1", "--num-epochs", "10", "--save-prefix", str(w / "model"), "--device", "-1"],
            [exe, "extract", "--radius", str(r), "--model", str(w / "model_epoch10.sav"), "--device", "-1",
             "-o", str(w / "picks.txt")] + [str(p) for p in sorted((w / "test").glob("*.mrc"))]]
    for c in cmds:
        res = subprocess.run(c, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"Topaz failed ({' '.join(c[:2])}): {res.stderr.strip()[-500:]}: row skipped")
            return None
    picks = read_particles(w / "picks.txt", allow_empty=True)
    H = test[0]["image"].shape[0]
    e = d_bin / 2
    picks = picks[(picks.x >= e) & (picks.y >= e) & (picks.x <= H - 1 - e) & (picks.y <= H - 1 - e)]
    by = {m["name"]: m for m in test}
    return pd.concat([to_full(picks[picks.micrograph.map(lambda s: Path(s).stem) == k], m) for k, m in by.items()],
                     ignore_index=True)


def main(argv=None):
    a = parse_args(argv)
    import torch
    from cryoseg.core import describe_machine, get_device, set_seed, set_threads
    from cryoseg.crf import CRFParams, crf_tiled
    from cryoseg.datasets import REAL_SAMPLE_DIAMETER_A, REAL_SAMPLE_DIAMETER_PX, REAL_SAMPLE_PIXEL_SIZE_A, load_real_sample
    from cryoseg.predict import predict_tiled
    from cryoseg.train import TrainConfig, fit

    set_seed(a.seed)
    threads = set_threads(a.threads)
    dev = get_device(a.device)
    t0 = time.perf_counter()
    train, val, test = (binned(load_real_sample(s, root=a.root), a.bin) for s in ("train", "valid", "test"))
    d_full, px_full = REAL_SAMPLE_DIAMETER_PX, REAL_SAMPLE_PIXEL_SIZE_A
    d_bin, px_bin = d_full / a.bin, train[0]["pixel_size_a"]
    n = train[0]["image"].shape[0]
    gap = min(np.minimum.reduce([m["truth"].x, m["truth"].y, n - 1 - m["truth"].x, n - 1 - m["truth"].y]).min()
              for m in train)
    assert gap >= d_bin / 2, f"a training label lies {gap:.1f} px from the border: the edge rule does not hold"
    print(f"sample: {len(train)}/{len(val)}/{len(test)} micrographs, binned {a.bin:g}x to {train[0]['image'].shape} at "
          f"{px_bin:.2f} Å/px, particles {REAL_SAMPLE_DIAMETER_A:.0f} Å = {d_bin:.1f} px; loaded in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    times = {}

    t = time.perf_counter()
    cfg = TrainConfig(model_kwargs=dict(depth=a.depth, width=a.width), epochs=a.epochs, crop_size=a.crop,
                      samples_per_epoch=a.samples_per_epoch, batch_size=a.batch, lr=a.lr, device=str(dev),
                      seed=a.seed, progress=False)
    res = fit(cfg, ([m["image"] for m in train], [m["mask"] for m in train]),
              ([m["image"] for m in val], [m["mask"] for m in val]),
              callback=lambda row: print(f"  epoch {row['epoch'] + 1}: loss {row['train_loss']:.3f}, "
                                         f"val IoU {row.get('val_iou', float('nan')):.3f}", flush=True))
    times["train_s"] = time.perf_counter() - t
    model = res["model"]
    tile = 512 if dev.type == "cpu" else 1024
    t = time.perf_counter()
    with torch.inference_mode():
        p_val = [predict_tiled(model, m["image"], tile_size=tile, device=dev) for m in val]
        p_test = [predict_tiled(model, m["image"], tile_size=tile, device=dev) for m in test]
    times["predict_s_per_micrograph"] = (time.perf_counter() - t) / (len(val) + len(test))

    rows = {}
    unet, t_seg, t_sc = calibrated_picks(p_val, val, p_test, test, d_bin, d_full)
    rows["U-Net"] = dict(**scores(unet, test, d_full, px_full, t_sc), **pixel_row(p_test, test, 0.5),
                         seg_threshold=t_seg, score_threshold=t_sc)
    with torch.inference_mode():   # test-time symmetry, `cryoseg predict`'s default (--tta rot180)
        s_val = [predict_tiled(model, m["image"], tile_size=tile, device=dev, tta="rot180") for m in val]
        s_test = [predict_tiled(model, m["image"], tile_size=tile, device=dev, tta="rot180") for m in test]
    sym, t_seg, t_sc = calibrated_picks(s_val, val, s_test, test, d_bin, d_full)
    rows["U-Net, rot180 TTA (CLI default)"] = dict(**scores(sym, test, d_full, px_full, t_sc),
                                                   **pixel_row(s_test, test, 0.5), seg_threshold=t_seg,
                                                   score_threshold=t_sc)
    if not a.no_crf:
        params = CRFParams(sxy_bilateral_px=max(d_bin / 4, 2.0))
        t = time.perf_counter()
        c_val = [crf_tiled(p, m["image"], params, device=dev) for p, m in zip(p_val, val)]
        c_test = [crf_tiled(p, m["image"], params, device=dev) for p, m in zip(p_test, test)]
        times["crf_s_per_micrograph"] = (time.perf_counter() - t) / (len(val) + len(test))
        crf, t_seg, t_sc = calibrated_picks(c_val, val, c_test, test, d_bin, d_full)
        rows["U-Net + CRF"] = dict(**scores(crf, test, d_full, px_full, t_sc), **pixel_row(c_test, test, 0.5),
                                   seg_threshold=t_seg, score_threshold=t_sc)
        mix, t_seg, t_sc = calibrated_picks(c_val, val, c_test, test, d_bin, d_full, p_val, p_test)
        rows["CRF picks, U-Net scores"] = dict(**scores(mix, test, d_full, px_full, t_sc), seg_threshold=t_seg,
                                              score_threshold=t_sc)
    blob, s = blob_rows(val, test, d_bin, d_full)
    rows["blob (LoG)"] = dict(**scores(blob, test, d_full, px_full, s), score_threshold=s)
    with tempfile.TemporaryDirectory() as wd:
        tz = topaz_row(train, val, test, d_bin, wd)
    if tz is not None:
        rows["Topaz"] = dict(**scores(tz, test, d_full, px_full, best_threshold(tz, test, d_full)))
    times["total_s"] = time.perf_counter() - t0

    machine = describe_machine(dev)
    table = pd.DataFrame(rows).T
    cols = ["precision", "recall", "f1", "f1_quarter_d", "ap", "centre_error_px", "centre_error_a", "pixel_iou",
            "pixel_f1", "n_picks", "n_true", "seg_threshold", "score_threshold"]
    table = table[[c for c in cols if c in table.columns]]
    setup = (f"train 4 / valid 1 / test 5 micrographs binned {a.bin:g}x ({px_bin:.2f} Å/px, d = {d_bin:.1f} px); "
             f"U-Net depth {a.depth} width {a.width}, {a.epochs} epochs x {a.samples_per_epoch} crops of {a.crop}², "
             f"batch {a.batch}, lr {a.lr:g}, seed {a.seed}, best epoch {res['best_epoch'] + 1}; thresholds chosen on "
             f"valid; picks within d/2 of the border dropped; scores on test in the 1024² frame (match within 0.5 d = 28 px; F1 at 0.25 d also), centre "
             f"error of matched picks")
    md = [f"**Machine:** {machine}; torch threads {threads}", "", f"**Setup:** {setup}", "",
          "| picker | precision | recall | F1 | F1 @0.25 d | AP | centre error px (Å) | pixel IoU (P > 0.5) |",
          "|---|---|---|---|---|---|---|---|"]
    for name, r in table.iterrows():
        iou = f"{r['pixel_iou']:.3f}" if "pixel_iou" in r and pd.notna(r.get("pixel_iou")) else "–"
        md.append(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['f1_quarter_d']:.3f} | "
                  f"{r['ap']:.3f} | {r['centre_error_px']:.1f} ({r['centre_error_a']:.0f}) | {iou} |")
    md += ["", "Times: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()),
           "Labels are incomplete (PROVENANCE.md): precision, F1 and AP are lower bounds."]
    text = "\n".join(md)
    print(text)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(text + "\n", encoding="utf-8")
        (out / "results.json").write_text(json.dumps(dict(machine=machine, args=vars(a), times=times,
                                                          rows=table.astype(float).to_dict(orient="index")),
                                                     indent=1), encoding="utf-8")
    return table


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)

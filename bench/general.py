"""The general model on real micrographs: zero-shot, fine-tuned with 1, 2, 4 labelled micrographs, and from scratch.

Run: OMP_NUM_THREADS=2 python bench/general.py [--epochs 8] [--samples-per-epoch 128] [--out bench/out/general]

What it does, on the EMPIAR-10028 / CryoPPP sample shipped in data/empiar10028-cryoppp (never used to train the
general model; its fixed split: train 4 / valid 1 / test 5):
  * every micrograph is binned so that its 300 A particles are the general model's size (56 px -> 24 px: the
    factor `cryoseg predict --model general --diameter-a 300 --pixel-size 5.36` uses, from
    `cryoseg.cli.predict.rescale_factor`), Fourier crop as predict does;
  * zero-shot: `cryoseg/weights/general.pt` as shipped, maps with rot180 test-time symmetry (predict's default),
    picked at the model's stored threshold (no real label used at all), and again with the segmentation
    threshold chosen on `valid` (as every other row); and the latter's picks re-scored by the mean probability
    over a disc at each centre (radius d/4 or d/2, chosen on `valid`; `cryoseg pick` scores by the region's
    mean, which ranks small blobs as high as whole particles);
  * fine-tuned: `fit` from the general model's weights (`init_checkpoint`, as `cryoseg train --init general`)
    on the first 1, 2 and 4 `train` micrographs, and from scratch on the same micrographs with the same
    epochs and crops; `valid` picks the best epoch (pixel IoU) and the segmentation threshold (best F1);
  * scores on `test` exactly as bench/real.py (its functions): picks within d/2 of the border dropped,
    matching within 0.5 d in the original 1024² frame, F1 at 0.25 d, AP over the pick score;
  * Topaz's pretrained model (`topaz extract`, its default model) when the `topaz` command is installed;
    otherwise the row is "not measured". (That path could not be run where this script was written.)
Writes <out>/table.md, <out>/results.json and <out>/learning_curve.png (F1 and AP against the number of labelled
micrographs; zero-shot as a horizontal line). The labels are incomplete (PROVENANCE.md): precision, F1 and AP
are lower bounds; compare rows with each other."""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import real as R  # noqa: E402  (bench/real.py: the same binning, picking and scoring)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="general", help="the general checkpoint (default: the shipped one)")
    ap.add_argument("--diameter-a", type=float, default=None, help="particle diameter, Å (default: the sample's, 300)")
    ap.add_argument("--n-labelled", default="1,2,4",
                    help="numbers of labelled train micrographs (default 1,2,4; '' for the zero-shot rows only)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--samples-per-epoch", type=int, default=128)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3, help="learning rate from scratch (default 3e-3)")
    ap.add_argument("--lr-finetune", type=float, default=1e-3, help="learning rate when fine-tuning (default 1e-3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None, help="cpu | cuda (default: CUDA when present)")
    ap.add_argument("--root", default=None, help="a copy of data/empiar10028-cryoppp (default: the repository's)")
    ap.add_argument("--out", default=str(HERE / "out" / "general"), help="folder for table.md, results.json, the figure")
    return ap.parse_args(argv)


def maps(model, mics, dev):
    "P(particle) of each micrograph, rot180 test-time symmetry (predict's default)."
    import torch
    from cryoseg.predict import predict_tiled
    with torch.inference_mode():
        return [predict_tiled(model, m["image"], tile_size=512, device=dev, tta="rot180") for m in mics]


def row(model, val, test, d_bin, d_full, px_full, dev, threshold=None, probs=None):
    "Scores on test: the segmentation threshold chosen on valid (or the given one); `probs`: the maps if known."
    p_val, p_test = probs or (maps(model, val, dev), maps(model, test, dev))
    if threshold is None:
        picks, t, _ = R.calibrated_picks(p_val, val, p_test, test, d_bin, d_full)
    else:
        picks, t = R.pick_all(p_test, test, d_bin, threshold), threshold
    return dict(**R.scores(picks, test, d_full, px_full), **R.pixel_row(p_test, test, 0.5), seg_threshold=t)


def disc_scored(probs, mics, d_bin, threshold, frac):
    "Picks at `threshold` in the original frame, each scored by the mean P over a disc of `frac` × d at its centre."
    from cryoseg.pick import pick_particles
    rows = []
    for p, m in zip(probs, mics):
        pk = pick_particles(p, d_bin, threshold=threshold, edge_px=d_bin / 2, micrograph=m["micrograph"])
        rows.append(R.to_full(pk.assign(score=[R.disc_mean(p, x, y, frac * d_bin) for x, y in zip(pk.x, pk.y)]), m))
    return pd.concat(rows, ignore_index=True)


def disc_row(probs, val, test, d_bin, d_full, px_full, threshold):
    """The same picks re-scored by the mean P over a disc at each centre (its radius, d/4 or d/2, chosen by AP on
    valid): a score that prefers objects of the stated size over smaller blobs the region mean ranks as high."""
    from cryoseg.metrics import average_precision
    truth = pd.concat([m["truth_full"] for m in val], ignore_index=True)
    names = [m["micrograph"] for m in val]
    ap = {f: average_precision(disc_scored(probs[0], val, d_bin, threshold, f), truth, d_full, micrographs=names)
          for f in (0.25, 0.5)}
    frac = max(ap, key=ap.get)
    picks = disc_scored(probs[1], test, d_bin, threshold, frac)
    return dict(**R.scores(picks, test, d_full, px_full), seg_threshold=threshold, disc_radius_frac=frac)


def train_on(train, val, a, dev, init=None, model_kwargs=None):
    "`fit` on the labelled `train` micrographs (from the weights of `init`, or from scratch); returns (model, seconds)."
    from cryoseg.train import TrainConfig, fit
    cfg = TrainConfig(model_kwargs=dict(model_kwargs or {}), epochs=a.epochs, crop_size=a.crop,
                      samples_per_epoch=a.samples_per_epoch, batch_size=a.batch,
                      lr=a.lr_finetune if init else a.lr, device=str(dev), seed=a.seed, progress=False,
                      init_checkpoint=None if init is None else str(init))
    t = time.perf_counter()
    res = fit(cfg, ([m["image"] for m in train], [m["mask"] for m in train]),
              ([m["image"] for m in val], [m["mask"] for m in val]))
    return res["model"], time.perf_counter() - t


def topaz_row(val, test, d_bin, d_full, px_full, workdir):
    "Topaz's pretrained model through its CLI on the binned micrographs; None when `topaz` is not installed."
    exe = shutil.which("topaz")
    if exe is None:
        return None
    from cryoseg.coords import read_particles
    from cryoseg.io import write_micrograph
    w, picks = Path(workdir) / "topaz", {}
    for split, mics in (("val", val), ("test", test)):
        for m in mics:
            write_micrograph(w / split / f"{m['name']}.mrc", m["image"], m["pixel_size_a"], overwrite=True)
        out = w / f"{split}.txt"
        # Topaz's models expect its own normalisation (`topaz preprocess`, a Gaussian-mixture fit per micrograph):
        # on raw grey values its pretrained model extracts nothing (measured: 0 picks on 311_10028)
        pre = subprocess.run([exe, "preprocess", "-s", "1", "-o", str(w / f"{split}_pre") + "/"]
                             + [str(p) for p in sorted((w / split).glob("*.mrc"))], capture_output=True, text=True)
        if pre.returncode != 0:
            print(f"Topaz preprocess failed: {pre.stderr.strip()[-500:]}: row skipped")
            return None
        c = [exe, "extract", "--radius", str(max(1, int(round(d_bin / 2)))), "--device", "-1", "-o", str(out)]
        res = subprocess.run(c + [str(p) for p in sorted((w / f"{split}_pre").glob("*.mrc"))], capture_output=True,
                             text=True)
        if res.returncode != 0:
            print(f"Topaz failed: {res.stderr.strip()[-500:]}: row skipped")
            return None
        p = read_particles(out, allow_empty=True)
        H, e = mics[0]["image"].shape[0], d_bin / 2
        p = p[(p.x >= e) & (p.y >= e) & (p.x <= H - 1 - e) & (p.y <= H - 1 - e)]
        picks[split] = pd.concat([R.to_full(p[p.micrograph.map(lambda s: Path(s).stem) == m["name"]], m) for m in mics],
                                 ignore_index=True)
    thr = R.best_threshold(picks["val"], val, d_full)
    return dict(**R.scores(picks["test"], test, d_full, px_full, thr), score_threshold=thr)


def figure(rows, ns, path):
    "F1 and AP against the number of labelled micrographs: fine-tuned, from scratch, zero-shot as a line."
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cryoseg.io import atomic_path
    fig, axs = plt.subplots(1, 2, figsize=(9, 3.6))
    disc = "general, zero-shot, disc score (threshold and radius from valid)"
    for ax, k in zip(axs, ("f1", "ap")):
        vals = [r[k] for r in rows.values()]
        ax.plot(ns, [rows[f"fine-tuned from general, {n} labelled"][k] for n in ns], "o-", label="fine-tuned from general")
        ax.plot(ns, [rows[f"from scratch, {n} labelled"][k] for n in ns], "s--", label="from scratch")
        ax.axhline(rows["general, zero-shot (threshold from valid)"][k], color="k", lw=1, label="general, zero-shot")
        if k == "ap" and disc in rows:
            ax.axhline(rows[disc][k], color="k", lw=1, ls=":", label="general, zero-shot, disc score")
        ax.set(xlabel="labelled micrographs", ylabel=k.upper(), xticks=ns, title=f"{k.upper()} on 5 test micrographs",
               ylim=(max(0.0, min(vals) - 0.05), min(1.0, max(vals) + 0.03)))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv=None):
    a = parse_args(argv)
    from cryoseg.cli.common import resolve_model
    from cryoseg.cli.predict import rescale_factor
    from cryoseg.core import describe_machine, get_device, set_seed, set_threads
    from cryoseg.datasets import REAL_SAMPLE_DIAMETER_A, REAL_SAMPLE_DIAMETER_PX, REAL_SAMPLE_PIXEL_SIZE_A, load_real_sample
    from cryoseg.io import atomic_path
    from cryoseg.train import checkpoint_info, load_checkpoint

    set_seed(a.seed)
    threads, dev = set_threads(a.threads), get_device(a.device)
    t0 = time.perf_counter()
    general = resolve_model(a.model)
    info = checkpoint_info(general)
    d_model = info["scale"]["diameter_px"]
    d_a = a.diameter_a or REAL_SAMPLE_DIAMETER_A
    f = rescale_factor("real sample", REAL_SAMPLE_PIXEL_SIZE_A, None, False, d_a, d_model)
    train, val, test = (R.binned(load_real_sample(s, root=a.root), f) for s in ("train", "valid", "test"))
    d_full, px_full = REAL_SAMPLE_DIAMETER_PX, REAL_SAMPLE_PIXEL_SIZE_A
    d_bin = d_full * test[0]["image"].shape[0] / test[0]["shape_full"][0]
    ns = [int(n) for n in a.n_labelled.split(",") if n.strip()]
    print(f"sample binned {f:.3f}x to {test[0]['image'].shape} ({test[0]['pixel_size_a']:.2f} Å/px, particles "
          f"{d_bin:.1f} px); general model {general} ({general.stat().st_size / 1e6:.1f} MB)", flush=True)

    rows, times, labelled = {}, {}, {}
    net = load_checkpoint(general, device=dev)[0]
    stored = (info["picking"] or {}).get("threshold", 0.5)
    zs = (maps(net, val, dev), maps(net, test, dev))
    rows["general, zero-shot (stored threshold, no real label)"] = row(net, val, test, d_bin, d_full, px_full, dev, stored, zs)
    rows["general, zero-shot (threshold from valid)"] = row(net, val, test, d_bin, d_full, px_full, dev, None, zs)
    t_zs = rows["general, zero-shot (threshold from valid)"]["seg_threshold"]
    rows["general, zero-shot, disc score (threshold and radius from valid)"] = disc_row(zs, val, test, d_bin, d_full,
                                                                                         px_full, t_zs)
    print("zero-shot:", {k: round(v, 3) for k, v in rows["general, zero-shot (threshold from valid)"].items()}, flush=True)
    for n in ns:
        for how, init in (("fine-tuned from general", general), ("from scratch", None)):
            model, secs = train_on(train[:n], val, a, dev, init, info["model_kwargs"])
            name = f"{how}, {n} labelled"
            rows[name], times[name], labelled[name] = row(model, val, test, d_bin, d_full, px_full, dev), secs, n
            print(f"{name}: F1 {rows[name]['f1']:.3f} AP {rows[name]['ap']:.3f} ({secs:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory() as wd:
        tz = topaz_row(val, test, d_bin, d_full, px_full, wd)
    if tz is not None:
        rows["Topaz, pretrained (its default model)"] = tz
    total = time.perf_counter() - t0

    machine = describe_machine(dev) + f"; torch threads {threads}"
    md = [f"**Machine:** {machine}", "",
          f"**Setup:** EMPIAR-10028 sample binned {f:.3f}x (particles {d_bin:.1f} px, {test[0]['pixel_size_a']:.2f} Å/px); "
          f"training rows: {a.epochs} epochs x {a.samples_per_epoch} crops of {a.crop}², batch {a.batch}, lr {a.lr:g} "
          f"(scratch) / {a.lr_finetune:g} (fine-tuning), seed {a.seed}, the first n `train` micrographs; `valid` picks the "
          f"best epoch and the segmentation threshold; scores on the 5 `test` micrographs in the 1024² frame (match within "
          f"0.5 d = 28 px); rot180 test-time symmetry. Total {total / 60:.1f} min.", "",
          "| model | labelled micrographs | precision | recall | F1 | F1 @0.25 d | AP | centre error px | pixel IoU | train s |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        n = labelled.get(name, 0)
        iou = f"{r['pixel_iou']:.3f}" if "pixel_iou" in r else "–"
        t = f"{times[name]:.0f}" if name in times else "–"
        md.append(f"| {name} | {n} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['f1_quarter_d']:.3f} | "
                  f"{r['ap']:.3f} | {r['centre_error_px']:.1f} | {iou} | {t} |")
    if tz is None:
        md.append("| Topaz, pretrained | 0 | not measured (the `topaz` command is not installed) | | | | | | | |")
    md += ["", "Labels are incomplete (PROVENANCE.md): precision, F1 and AP are lower bounds."]
    text = "\n".join(md)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "table.md", overwrite=True) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    res = dict(machine=machine, args=vars(a), bin_factor=f, d_bin=d_bin, total_s=total, train_s=times,
               model=str(general), rows={k: {c: float(v) for c, v in r.items()} for k, r in rows.items()})
    with atomic_path(out / "results.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(res, indent=1), encoding="utf-8")
    if ns:                                      # a learning curve needs labelled rows
        figure(rows, ns, out / "learning_curve.png")
    print(f"wrote {out / 'table.md'}, {out / 'results.json'}" + (f", {out / 'learning_curve.png'}" if ns else ""))
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)

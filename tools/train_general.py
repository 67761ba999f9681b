"""Train cryoseg's general picking model on domain-randomised simulations only, and ship it.

Run: OMP_NUM_THREADS=2 python tools/train_general.py [--minutes 20] [--seed 0] [--out cryoseg/weights]

What it does (every random draw from --seed; no real micrograph is read):
  * every epoch simulates --n-micrographs new micrographs with `cryoseg.randomize.randomized_micrographs`
    (random particle kind, size 100-400 A, stretch, texture, crowding, optics, noise, ice, carbon, junk;
    blur / low-pass / 8-bit / JPEG processing), bins each by its `bin_factor` with
    `cryoseg.preprocess.downsample` (exactly as `cryoseg predict --diameter-a` bins a real micrograph), so that
    particles are 20-28 px across, and trains the package's default U-Net on random crops of them
    (`cryoseg.data.SegDataset`, normalised after binning as `predict` does);
  * validates on --n-val held-out randomised micrographs (their own seed stream), which choose the best
    epoch (pixel IoU) and the picking threshold (`cryoseg.cli.train.fit_picking`: best F1 at 0.5 d, d = 24 px);
  * with --minutes and no --epochs, times one epoch's work first and trains as many epochs as fit in the
    budget (the data card records the number: `--epochs N` reproduces the run exactly on any machine);
  * writes <out>/general.pt (the weights, `checkpoint_scale(diameter_px=24, scale_free=True)`, the picking
    record and the training record; optimizer state dropped) and <out>/general.md, the data card.
`--card-only [--bench bench/out/general/results.json]` rewrites the data card from general.pt's record (quoting
bench/general.py's real-sample rows) without training.
The crops come from `randomized_dataset` here: `cryoseg.randomize` (layer 2) may not import `cryoseg.data`.
"""
import argparse
import datetime
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
MODEL_DIAMETER_PX = 24.0       # the scale-free contract: particles this many px across, at any pixel size


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="training budget (default 20); ignored with --epochs")
    ap.add_argument("--epochs", type=int, default=None, help="number of epochs (default: as many as fit in --minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-micrographs", type=int, default=16, help="new randomised micrographs per epoch (default 16)")
    ap.add_argument("--samples-per-epoch", type=int, default=256, help="training crops per epoch (default 256)")
    ap.add_argument("--n-val", type=int, default=8, help="held-out randomised validation micrographs (default 8)")
    ap.add_argument("--crop", type=int, default=96, help="training crop side, model pixels (default 96)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--width", type=int, default=16, help="U-Net width (default: the package default, 16)")
    ap.add_argument("--depth", type=int, default=3, help="U-Net depth (default: the package default, 3)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all usable cores)")
    ap.add_argument("--out", default=str(ROOT / "cryoseg" / "weights"), help="folder for general.pt and general.md")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing general.pt / general.md")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                    help="change a cryoseg.randomize.Randomization range, e.g. --set p_uint8=0 (ablations of the "
                    "simulator's realism knobs; the shipped model uses the defaults)")
    ap.add_argument("--card-only", action="store_true",
                    help="only rewrite <out>/general.md from the record stored in <out>/general.pt (no training)")
    ap.add_argument("--bench", default=None, metavar="RESULTS.json",
                    help="with --card-only: quote the real-sample rows of bench/general.py's results.json in the card")
    return ap.parse_args(argv)


def binned(results):
    """Randomised micrographs in the model's frame: `(images, masks, names, truth)`, each binned by its
    `bin_factor` (image and mask together), the truth particle table scaled to the binned frame."""
    import pandas as pd
    from cryoseg.particles import scale_particles
    from cryoseg.preprocess import downsample
    images, masks, names, truth = [], [], [], []
    for r in results:
        img, mask, _ = downsample(r.image, r.mask, factor=r.params["bin_factor"])
        images.append(img); masks.append(mask); names.append(r.params["name"])
        truth.append(scale_particles(r.particles, r.image.shape, img.shape).assign(micrograph=r.params["name"]))
    return images, masks, names, pd.concat(truth, ignore_index=True)


def randomized_dataset(n_micrographs, crop_size, length, seed, p_particle=0.7, rnd=None):
    "A torch Dataset of `SegDataset` crops from `n_micrographs` freshly randomised, binned micrographs per epoch."
    import torch
    from cryoseg.data import SegDataset
    from cryoseg.randomize import randomized_micrographs

    class RandomizedDataset(torch.utils.data.Dataset):
        def __init__(self):
            self.epoch, self._at, self._crops, self.sim_s = 0, None, None, 0.0

        def set_epoch(self, epoch):
            self.epoch = int(epoch)
            if self._at != self.epoch:
                t = time.perf_counter()
                images, masks, names, _ = binned(randomized_micrographs(n_micrographs, seed, self.epoch, rnd))
                self.sim_s = time.perf_counter() - t
                self._crops = SegDataset(images, masks, crop_size, length=length, p_particle=p_particle,
                                         augment=True, seed=seed, names=names)
                self._crops.set_epoch(self.epoch)
                self._at = self.epoch

        def __len__(self):
            return length

        def __getitem__(self, i):
            if self._crops is None: self.set_epoch(self.epoch)
            return self._crops[i]

    return RandomizedDataset()


def epochs_for(minutes, a, val_images, val_masks, dev):
    """How many epochs fit in `minutes`: a throw-away `fit` of two short epochs (2 micrographs, 6 batches, the real
    validation set) on another seed stream, its second epoch timed part by part and scaled to a full epoch."""
    from cryoseg.train import TrainConfig, fit
    ds, stamps, rows = randomized_dataset(2, a.crop, a.batch * 6, a.seed + 10**6), [], []
    cfg = TrainConfig(model_kwargs=dict(depth=a.depth, width=a.width), epochs=2, crop_size=a.crop,
                      samples_per_epoch=a.batch * 6, batch_size=a.batch, lr=a.lr, device=str(dev), progress=False)
    stamps.append(time.perf_counter())
    fit(cfg, ds, (val_images, val_masks), callback=lambda row: (rows.append(row), stamps.append(time.perf_counter())))
    wall, t_train = stamps[2] - stamps[1], rows[1]["time_s"]
    t_sim, t_step = ds.sim_s / 2, t_train / 6
    t_val = max(0.0, wall - t_train - ds.sim_s)
    per_epoch = a.n_micrographs * t_sim + -(-a.samples_per_epoch // a.batch) * t_step + t_val
    return max(1, int(0.95 * minutes * 60 / per_epoch)), dict(sim_s=t_sim, step_s=t_step, val_s=t_val, epoch_s=per_epoch)


def ship(best, out, record, picking, overwrite):
    "Write `out/general.pt`: the best epoch's weights, scale, picking record and training record, no optimizer state."
    import torch
    from cryoseg.io import atomic_path
    ck = torch.load(best, map_location="cpu", weights_only=True)
    keep = ("cryoseg_checkpoint", "model_name", "model_kwargs", "model", "epoch", "cfg", "metrics", "scale")
    slim = {k: ck[k] for k in keep if k in ck}
    slim["cfg"] = dict(slim.get("cfg") or {}, out_dir=None)      # the run's temporary folder is gone
    slim.update(picking=picking, general=record)
    dst = Path(out) / "general.pt"
    with atomic_path(dst, overwrite=overwrite) as tmp:
        torch.save(slim, tmp)
    return dst


def real_scores(results_json):
    "The data card's lines on the real sample, from bench/general.py's results.json (None: the pointer only)."
    if results_json is None:
        return ""
    res = json.loads(Path(results_json).read_text(encoding="utf-8"))
    lines = [f"Measured by `bench/general.py` ({res['machine'].split(',')[0]}; labels incomplete, so precision, F1 and AP "
             "are lower bounds):", "", "| model | precision | recall | F1 | AP |", "|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        lines.append(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['ap']:.3f} |")
    return "\n" + "\n".join(lines) + "\n"


def data_card(record, picking, size_bytes, bench=None):
    "The data card, general.md (`bench`: bench/general.py's results.json, whose rows it quotes)."
    r, v = record, picking
    rnd = "\n".join(f"| `{k}` | {val} |" for k, val in r["randomization"].items())
    return f"""# cryoseg's general picking model (`--model general`)

A U-Net (depth {r['model_kwargs']['depth']}, width {r['model_kwargs']['width']}, {r['n_parameters']:,} parameters,
{size_bytes / 1e6:.1f} MB) that segments particles about **{MODEL_DIAMETER_PX:g} px across at any pixel size**
(`scale_free`). Use it with the particle's diameter: `cryoseg predict --model general --diameter-a D` bins every
micrograph so that a D Å particle is {MODEL_DIAMETER_PX:g} px across, and `cryoseg pick` returns coordinates in the
original frame. Fine-tune it with a few labelled micrographs: `cryoseg train --init general`.

## What it was trained on

**Only simulations**: no real micrograph and no real label was used for training, validation, model selection
or the picking threshold. Every micrograph was drawn by `cryoseg.randomize.randomized_micrographs` (domain
randomisation; see `nbs/02e_randomize.ipynb`) from seed {r['seed']}: built-in pseudo-atomic particles of random kind,
size (100–400 Å), stretch and internal texture, random crowding and views, defocus, astigmatism, B-factor,
noise, ice, carbon edges and contaminants, then blur / low-pass / 8-bit / JPEG processing as users export
micrographs. Each was binned by its `bin_factor` (Fourier crop, as `predict` bins real micrographs) so that
particles are 20–28 px across, and normalised (robust z-score) after binning.

- training: {r['epochs']} epochs x {r['n_micrographs']} new micrographs ({r['epochs'] * r['n_micrographs']} in all) x
  {r['samples_per_epoch']} random crops of {r['crop']}² (70 % on a particle; flips, 90° turns, intensity jitter),
  batch {r['batch']}, AdamW, one-cycle lr {r['lr']:g}, loss cross-entropy + Dice;
- validation: {r['n_val']} held-out randomised micrographs (their own seed stream), choosing the best epoch
  ({r['best_epoch'] + 1}, pixel IoU {r['val_metrics'].get('val_iou', float('nan')):.3f}) and the picking threshold.

Randomisation ranges (`cryoseg.randomize.Randomization()` defaults):

| field | value |
|---|---|
{rnd}

## How long, where

{r['train_minutes']:.1f} min of training ({r['total_minutes']:.1f} min with simulation of the validation set and
threshold fitting) on: {r['machine']}; {r['date']}. Command: `{r['command']}`.
Reproduce with `--epochs {r['epochs']} --seed {r['seed']}`: the same simulated micrographs (drawn on the CPU) on any machine,
the same weights up to floating-point differences between machines.

## Scores

On the held-out randomised simulations ({r['n_val']} micrographs, {v['n_true']} particles; picks matched within
0.5 d), at the stored picking threshold {v['threshold']:g} (minimum area {v.get('min_area_frac', 0.2):g} of the disc;
`rot180` test-time symmetry, as `predict`): precision {v['precision']:.3f}, recall {v['recall']:.3f}, F1 {v['f1']:.3f},
AP {v['ap']:.3f}. These draws include particles too faint or too crowded to find: they rank settings, they
are no forecast of real data.

On real micrographs: the EMPIAR-10028 sample shipped in `data/` (never used here) is scored zero-shot and
after fine-tuning by `bench/general.py`; the full table is in BENCHMARKS.md, "A general model trained on
simulations".
{real_scores(bench)}
## Limits

The particles are cryoseg's pseudo-atomic shapes, not real proteins; the noise is white Gaussian (at a drawn
SNR) on physically modelled contrast; no motion blur, no drift, no gain artefacts, no filaments, no
membranes or vesicles, no phase plate. Particles smaller than {MODEL_DIAMETER_PX:g} px in the user's micrograph are
refused by `predict` (cryoseg bins, it does not upsample). Expect to fine-tune (`--init general`) on a few
labelled micrographs when zero-shot picks are not good enough.
"""


def main(argv=None):
    a = parse_args(argv)
    import torch
    from cryoseg.cli.train import fit_picking
    from cryoseg.core import describe_machine, get_device, set_seed, set_threads
    from cryoseg.io import atomic_path
    from cryoseg.models import count_parameters
    from cryoseg.randomize import Randomization, randomized_micrographs
    from cryoseg.train import TrainConfig, checkpoint_scale, fit

    out = Path(a.out)
    if a.card_only:
        ck = torch.load(out / "general.pt", map_location="cpu", weights_only=True)
        with atomic_path(out / "general.md", overwrite=True) as tmp:
            tmp.write_text(data_card(ck["general"], ck["picking"], (out / "general.pt").stat().st_size, a.bench),
                           encoding="utf-8")
        print(f"wrote {out / 'general.md'} from {out / 'general.pt'}")
        return out / "general.pt"
    for f in ("general.pt", "general.md"):
        if (out / f).exists() and not a.overwrite:
            sys.exit(f"{out / f}: exists; pass --overwrite to replace it")
    set_seed(a.seed)
    threads = set_threads(a.threads)
    dev = get_device(a.device)
    t0 = time.perf_counter()
    import json as _json
    from dataclasses import replace
    overrides = {k: _json.loads(v) for k, v in (item.split("=", 1) for item in a.sets)}
    rnd = replace(Randomization(), **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    val_images, val_masks, val_names, val_truth = binned(randomized_micrographs(a.n_val, a.seed, None, rnd))
    print(f"validation: {a.n_val} randomised micrographs, {len(val_truth)} particles, "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    timing = None
    epochs = a.epochs
    if epochs is None:
        epochs, timing = epochs_for(a.minutes, a, val_images, val_masks, dev)
        print(f"timed: {timing['epoch_s']:.1f} s per epoch -> {epochs} epochs in {a.minutes:g} min", flush=True)
    scale = checkpoint_scale(diameter_px=MODEL_DIAMETER_PX, scale_free=True)
    with tempfile.TemporaryDirectory() as work:
        cfg = TrainConfig(model_kwargs=dict(depth=a.depth, width=a.width), epochs=epochs, crop_size=a.crop,
                          samples_per_epoch=a.samples_per_epoch, batch_size=a.batch, lr=a.lr, device=str(dev),
                          seed=a.seed, out_dir=work, progress=False)
        t1 = time.perf_counter()
        res = fit(cfg, randomized_dataset(a.n_micrographs, a.crop, a.samples_per_epoch, a.seed, rnd=rnd),
                  (val_images, val_masks), scale=scale,
                  callback=lambda row: print(f"  epoch {row['epoch'] + 1}/{epochs}: loss {row['train_loss']:.3f}, val IoU "
                                             f"{row.get('val_iou', float('nan')):.3f} ({(time.perf_counter() - t1) / 60:.1f} min)",
                                             flush=True))
        train_min = (time.perf_counter() - t1) / 60
        with torch.inference_mode():
            picking = fit_picking(res["model"], val_images, val_names, val_truth, MODEL_DIAMETER_PX, device=dev)
        picking["fitted_on"] = "validation: held-out randomised simulations"
        picking["score"] = "disc"   # `cryoseg pick` ranks this model's picks by the mean P over the particle's disc:
        # zero-shot AP 0.825 against 0.774 with the region mean on the real sample (BENCHMARKS.md)
        record = dict(seed=a.seed, epochs=epochs, n_micrographs=a.n_micrographs, samples_per_epoch=a.samples_per_epoch,
                      crop=a.crop, batch=a.batch, lr=a.lr, n_val=a.n_val, best_epoch=int(res["best_epoch"]),
                      val_metrics={k: float(v) for k, v in res["best_metrics"].items()},
                      model_kwargs=dict(depth=a.depth, width=a.width), n_parameters=count_parameters(res["model"]),
                      randomization={k: list(v) if isinstance(v, tuple) else v for k, v in asdict(rnd).items()},
                      train_minutes=train_min, total_minutes=(time.perf_counter() - t0) / 60, timing=timing,
                      machine=describe_machine(dev) + f"; torch threads {threads}",
                      date=datetime.date.today().isoformat(),
                      command="OMP_NUM_THREADS=2 python tools/train_general.py " + " ".join(sys.argv[1:] if argv is None else argv),
                      trained_on="cryoseg.randomize simulations only (no real micrographs)")
        dst = ship(Path(work) / "best.pt", out, record, picking, a.overwrite)
    text = data_card(record, picking, dst.stat().st_size)
    with atomic_path(out / "general.md", overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(json.dumps({k: v for k, v in picking.items() if k != "sweep"}, indent=1))
    print(f"wrote {dst} ({dst.stat().st_size / 1e6:.2f} MB) and {out / 'general.md'}; "
          f"{record['total_minutes']:.1f} min in all")
    return dst


if __name__ == "__main__":
    main()

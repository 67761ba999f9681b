"""Do picks from the binned pipeline match the full-resolution pipeline's? (issue 18), through the command line.

Seeded micrographs are simulated by `cryoseg simulate` (projections of the built-in globular volume with a
CTF and white Gaussian noise) at a fine pixel size: by default 2048² at 2 Å/px with 192 Å particles (94.7 px
across as the simulator measures them: the diameter used for labels and matching), 40 particles each,
footprint SNR 0.1 per 2 Å pixel; train/val/test = 4/1/4 micrographs from one seeded run, in that order.
Both pipelines then run as a user runs them, one `cryoseg` process per step:

  * full resolution: `cryoseg label coords` without binning (discs of the particle's diameter at 2 Å/px),
    `cryoseg train` on `--crop-full`² crops, `cryoseg predict` (the micrographs are at the model's pixel
    size: nothing is rescaled), `cryoseg pick`;
  * binned: `cryoseg label coords --bin 4` (`--bin`; 8 Å/px, particles ~24 px), `cryoseg train` on
    `--crop-binned`² crops (the same field of view), `cryoseg predict` on the same 2 Å/px test files (it
    Fourier-crops each one to the model's 8 Å/px itself), `cryoseg pick`, which writes the picks in the original 2 Å/px frame.

Both trainings use the same epochs, crops per epoch, batch size and seed; every other setting is the
commands' default (U-Net, rot180 test-time symmetry, no CRF, each model's picking threshold fitted on the
validation micrograph). Scores on the test micrographs, all in original pixels, one-to-one matching within
0.5 × the diameter (`cryoseg.metrics.picking_metrics`): the F1 between the two pick sets (the full-resolution
picks as the reference; F1 is symmetric in the two sets), the r.m.s. and mean (dx, dy) offset of the matched
pairs, each pipeline's precision/recall/F1 and r.m.s. centre error against the simulated truth, and the wall
seconds per micrograph of `predict` + `pick` (whole commands, start-up included, divided by the number of test
micrographs). Prints the machine, the command line and a markdown snippet for BENCHMARKS.md (also to --out).

    OMP_NUM_THREADS=2 python bench/binned_agreement.py                 # ~12 min on a 2-core CPU
    python bench/binned_agreement.py --epochs 20 --device cuda --work /tmp/ba --out /tmp/ba.md
    python bench/binned_agreement.py --quick          # the commands end to end, < 1 min (untrained: no picks)
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cryoseg.cli.common import machine_info


def cryoseg(log: Path, *args) -> float:
    "Run `cryoseg <args> --quiet` as a child process (output to `log`); its wall seconds. Stops on failure."
    cmd = [sys.executable, "-m", "cryoseg.cli", *map(str, args), "--quiet"]
    t = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + shlex.join(cmd[2:]) + "\n"); f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"`{shlex.join(cmd[2:])}` failed (exit {rc}); its output:\n" + log.read_text()[-3000:])
    return time.perf_counter() - t


def simulate(a, work: Path, log: Path) -> dict[str, Path]:
    """One `cryoseg simulate` run of train + val + test micrographs (seed `a.seed`: micrograph i from the i-th child
    of its SeedSequence), split in that order into folders of links `<work>/<split>/{micrographs,coordinates}`."""
    sets = [f"shape=[{a.size},{a.size}]", f"pixel_size_a={a.pixel_size}", f"diameter_a={a.diameter_a}",
            f"box_size={a.box_size}", f"n_particles={a.n_particles}", f"snr={a.snr}"]
    sim, sizes = work / "sim", dict(train=a.n_train, val=a.n_val, test=a.n_test)
    cryoseg(log, "simulate", "--out", sim, "--n-micrographs", sum(sizes.values()), "--seed", a.seed,
            *[x for s in sets for x in ("--set", s)], "--device", "cpu")     # CPU: the same data on every machine
    names, roots, k = sorted(p.stem for p in (sim / "micrographs").glob("*.mrc")), {}, 0
    for split, n in sizes.items():
        roots[split] = work / split
        for sub, ext in (("micrographs", "mrc"), ("coordinates", "star")):
            (roots[split] / sub).mkdir(parents=True, exist_ok=True)
            for name in names[k:k + n]:
                (roots[split] / sub / f"{name}.{ext}").symlink_to(sim / sub / f"{name}.{ext}")
        k += n
    return roots


def train(a, tag: str, roots: dict, work: Path, log: Path, dev: list, bin_args: list, crop: int) -> tuple[Path, float]:
    "Label the train and val folders (`cryoseg label coords` with `bin_args`), train a U-Net; (best.pt, train seconds)."
    for split in ("train", "val"):
        cryoseg(log, "label", "coords", "--micrographs", roots[split] / "micrographs",
                "--coordinates", roots[split] / "coordinates", "--out", work / f"labels-{tag}" / split, *bin_args)
    t = cryoseg(log, "train", "--data", work / f"labels-{tag}" / "train", "--val", work / f"labels-{tag}" / "val",
                "--out", work / f"model-{tag}", "--epochs", a.epochs, "--batch-size", a.batch_size, "--seed", a.seed,
                "--set", f"crop_size={crop}", "--set", f"samples_per_epoch={a.samples_per_epoch}", *dev)
    return work / f"model-{tag}" / "best.pt", t


def predict_pick(model: Path, mics: Path, tag: str, work: Path, log: Path, dev: list) -> tuple[pd.DataFrame, float, dict]:
    "`cryoseg predict` then `cryoseg pick` on `mics`; (picks in the original frame, wall seconds, predict's record)."
    pred, out = work / f"pred-{tag}", work / f"picks-{tag}"
    t = cryoseg(log, "predict", "--model", model, "--data", mics, "--out", pred, *dev)
    t += cryoseg(log, "pick", "--probs", pred / "probabilities", "--out", out)
    from cryoseg.coords import read_star
    rec = json.loads((pred / "cryoseg-predict.json").read_text())
    return read_star(out / "particles.star", allow_empty=True), t, rec


def offsets(picks: pd.DataFrame, ref: pd.DataFrame, names: list[str], radius_px: float) -> np.ndarray:
    "`(n, 2)` (dx, dy) of `picks` minus `ref` over one-to-one matched pairs within `radius_px`, all micrographs."
    from cryoseg.metrics import match_picks, micrograph_rows
    d = [np.zeros((0, 2))]
    for n in names:
        p, r = micrograph_rows(picks, n), micrograph_rows(ref, n)
        pi, ri, _ = match_picks(p, r, radius_px)
        d.append(p[["x", "y"]].to_numpy(float)[pi] - r[["x", "y"]].to_numpy(float)[ri])
    return np.concatenate(d)


def rms(d: np.ndarray) -> float:
    "Root mean square length of the `(n, 2)` offsets (nan when there are none)."
    return float(np.sqrt((d ** 2).sum(1).mean())) if len(d) else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048, help="micrograph side in pixels (default 2048)")
    ap.add_argument("--pixel-size", type=float, default=2.0, help="original pixel size, Å (default 2)")
    ap.add_argument("--diameter-a", type=float, default=192.0, help="particle diameter, Å (default 192)")
    ap.add_argument("--box-size", type=int, default=128, help="simulated volume's box, px (default 128)")
    ap.add_argument("--n-particles", type=int, default=40, help="particles per micrograph (default 40)")
    ap.add_argument("--snr", type=float, default=0.1, help="footprint SNR per original pixel (default 0.1)")
    ap.add_argument("--n-train", type=int, default=4); ap.add_argument("--n-val", type=int, default=1)
    ap.add_argument("--n-test", type=int, default=4)
    ap.add_argument("--bin", type=float, default=4.0, help="bin factor of the binned pipeline (default 4)")
    ap.add_argument("--epochs", type=int, default=8, help="epochs of both trainings (default 8)")
    ap.add_argument("--samples-per-epoch", type=int, default=128, help="training crops per epoch (default 128)")
    ap.add_argument("--batch-size", type=int, default=8, help="training batch size (default 8)")
    ap.add_argument("--crop-full", type=int, default=192, help="training crop at full resolution, px (default 192)")
    ap.add_argument("--crop-binned", type=int, default=None, help="training crop when binned, px (default crop-full / bin)")
    ap.add_argument("--device", default="cpu", help="torch device of train and predict (default cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of each command (default: theirs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="end-to-end check of the commands, < 1 min: 512² micrographs, 1 epoch of 8 crops (no picks expected)")
    ap.add_argument("--work", default=None, help="work in this new or empty folder and keep it (default: a temporary one)")
    ap.add_argument("--out", default=None, help="also write the markdown snippet here")
    a = ap.parse_args(argv)
    if a.quick:
        a.size, a.n_particles, a.n_train, a.n_val, a.n_test = 512, 6, 1, 1, 1
        a.epochs, a.samples_per_epoch, a.crop_full = 1, 8, 128
    a.crop_binned = a.crop_binned or int(round(a.crop_full / a.bin))
    if a.work and Path(a.work).is_dir() and any(Path(a.work).iterdir()):
        ap.error(f"--work {a.work}: the folder is not empty; give a new or empty one")
    dev = ["--device", a.device] + (["--threads", a.threads] if a.threads else [])
    m = machine_info(a.device)
    load0 = " ".join(f"{x:.1f}" for x in os.getloadavg())
    command = shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(["binned_agreement", *argv])
    print(f"machine: {m['description']}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; load average "
          f"at start {load0}\ncommand: {command}", flush=True)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cryoseg-binned-") as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        log = work / "commands.log"
        print(f"work folder: {work}; every command and its output: {log}", flush=True)
        roots = simulate(a, work, log)
        truth = pd.concat([_truth(p) for p in sorted((roots["test"] / "coordinates").glob("*.star"))], ignore_index=True)
        names = sorted(f"{p.stem}.mrc" for p in (roots["test"] / "micrographs").glob("*.mrc"))
        d_px = float(np.median(truth["diameter_px"]))
        rows = {}
        for tag, bin_args, crop in (("full", [], a.crop_full), ("binned", ["--bin", a.bin], a.crop_binned)):
            model, t_train = train(a, tag, roots, work, log, dev, bin_args, crop)
            print(f"{tag}: trained in {t_train:.0f} s", flush=True)
            picks, t_pp, rec = predict_pick(model, roots["test"] / "micrographs", tag, work, log, dev)
            rows[tag] = dict(picks=picks, t_train=t_train, t_pp=t_pp, rec=rec, crop=crop, model=model)
        from cryoseg.metrics import picking_metrics
        from cryoseg.train import checkpoint_info
        full, binned = rows["full"]["picks"], rows["binned"]["picks"]
        agree = picking_metrics(binned, full, d_px, micrographs=names)
        off = offsets(binned, full, names, 0.5 * d_px)
        for r in rows.values():
            r["vs_truth"] = picking_metrics(r["picks"], truth, d_px, micrographs=names)
            r["err"] = offsets(r["picks"], truth, names, 0.5 * d_px)
            info = checkpoint_info(r["model"])
            r.update(scale=info["scale"], picking=info["picking"] or {}, metrics=info["metrics"], epoch=info["epoch"])
    t_all = time.perf_counter() - t_all
    text = report(a, m, load0, command, d_px, agree, off, rows, t_all)
    print("\n" + text)
    if a.out:
        Path(a.out).write_text(text)
    return agree


def _truth(star: Path) -> pd.DataFrame:
    "The simulated particles of one test micrograph, named like its picks (`mic_0000.mrc`)."
    from cryoseg.coords import read_particles
    return read_particles(star, allow_empty=True).assign(micrograph=f"{star.stem}.mrc")


def _num(x, fmt: str = ".3f") -> str:
    return "–" if x is None or not np.isfinite(x) else format(x, fmt)


def report(a, m, load0, command, d_px, agree, off, rows, t_all) -> str:
    n = a.n_test
    mb = off.mean(0) if len(off) else (np.nan, np.nan)
    lines = ["### Binned vs full-resolution picks on simulated micrographs (`bench/binned_agreement.py`, issue 18)", "",
             f"Machine: {m['description']}; load average at start {load0}.", f"Command: `{command}` ({t_all / 60:.1f} min).", "",
             f"{a.size}² micrographs at {a.pixel_size:g} Å/px, built-in globular volume of {a.diameter_a:g} Å "
             f"({d_px:.1f} px across), {a.n_particles} particles each, CTF (defocus 1–2 µm, 300 kV) and white noise at "
             f"footprint SNR {a.snr:g} per {a.pixel_size:g} Å pixel; train/val/test = {a.n_train}/{a.n_val}/{a.n_test} "
             f"micrographs (in that order from one `cryoseg simulate --seed {a.seed}`). Labels: `cryoseg label coords` discs; "
             f"U-Net, {a.epochs} epochs × {a.samples_per_epoch} crops, batch {a.batch_size}, crops {a.crop_full}² "
             f"(full) and {a.crop_binned}² (binned ×{a.bin:g}), seed {a.seed}, device {a.device}; predict with its "
             f"defaults (rot180 TTA, no CRF), pick at each model's validation threshold. Picks matched one-to-one "
             f"within 0.5 × diameter = {0.5 * d_px:.1f} original px.", "",
             "| pipeline | model Å/px | train s | best epoch | val pixel IoU | val pick F1 | threshold / min area | "
             "picks | precision | recall | F1 vs truth | r.m.s. centre error (px) | predict+pick s/mic | of which network |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for tag, r in rows.items():
        v, pk, vm = r["vs_truth"], r["picking"], r.get("metrics") or {}
        what = "full resolution" if tag == "full" else f"binned ×{a.bin:g}"
        lines.append(f"| {what} | {r['scale']['pixel_size_a']:g} | {r['t_train']:.0f} | "
                     f"{_num(r.get('epoch'), 'd')} | {_num(vm.get('val_iou'))} | {_num(pk.get('f1'))} | "
                     f"{_num(pk.get('threshold'), '.2f')} / {_num(pk.get('min_area_frac'), '.2f')} | {v['n_picks']} | "
                     f"{v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {_num(rms(r['err']), '.2f')} | "
                     f"{r['t_pp'] / n:.2f} | {r['rec']['results']['seconds_predict'] / n:.2f} |")
    lines += ["", "| binned vs full resolution | value |", "|---|---|",
              f"| F1 between the pick sets | **{agree['f1']:.3f}** (target ≥ 0.98) |",
              f"| matched / binned picks / full-res picks | {agree['n_matched']} / {agree['n_picks']} / {agree['n_true']} |",
              f"| r.m.s. offset of matched pairs (original px) | {_num(rms(off), '.2f')} |",
              f"| mean offset (dx, dy) binned − full (original px) | ({_num(mb[0], '+.2f')}, {_num(mb[1], '+.2f')}) |",
              f"| predict+pick speed-up, binned | {rows['full']['t_pp'] / rows['binned']['t_pp']:.1f}× |", ""]
    if agree["n_picks"] == 0 or agree["n_true"] == 0:
        lines += ["A pipeline picked nothing (untrained, e.g. --quick): the F1 between the two sets says nothing here.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

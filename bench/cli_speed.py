"""What a user runs, timed: N 4096² MRC micrographs on disk → `cryoseg predict` → `cryoseg pick`.

The binned path (the default since the scale contract) reads each 1 Å/px micrograph, Fourier-crops it to
the model's pixel size (4 Å/px here, so a 1024² inference), runs the U-Net (and the CRF with --crf),
writes the map and its record, then `cryoseg pick` returns the picks to the original frame and writes
STAR and BOX files. The full-resolution path is the same model on the same files with `--no-rescale`
(what `predict` did before it knew scales). Both run in this process's session, one after the other, as
separate `cryoseg` processes (start-up, reading and writing included), so the ratio compares like with like.

Reports wall seconds per micrograph (whole commands, divided by N), the network and CRF seconds from
predict's record, peak resident memory of the largest child process and the machine. The weights are a
short toy training (speed does not depend on them), so the picks are not compared here: how well binned
picks find the particles is tested in tests/test_scale.py against the truth.

    python bench/cli_speed.py                      # 4 micrographs, CPU
    python bench/cli_speed.py --n 16 --device cuda --crf torch
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path



def make_inputs(root: Path, n: int, size: int, diameter_px: float, seed: int = 0) -> Path:
    "N `size`² micrographs at 1 Å/px (dark discs in noise: speed does not depend on the content)."
    from cryoseg.io import write_micrograph
    from cryoseg.testing import toy_micrograph
    mics = root / "mics"
    for k in range(n):
        img, _ = toy_micrograph((size, size), n=150, diameter_px=diameter_px, contrast=1.0, seed=seed + k)
        write_micrograph(mics / f"mic_{k:04d}.mrc", img, pixel_size_a=1.0)
    return mics


def make_model(root: Path, model_px: float, diameter_px_model: float) -> Path:
    "The default U-Net, one short epoch on toy data (speed does not depend on the weights), scale recorded."
    from cryoseg.testing import toy_micrograph
    from cryoseg.train import TrainConfig, fit
    pairs = [toy_micrograph((256, 256), n=12, diameter_px=diameter_px_model, seed=s) for s in range(2)]
    fit(TrainConfig(epochs=1, samples_per_epoch=8, out_dir=str(root / "model"), progress=False, device="cpu"),
        ([p[0] for p in pairs], [p[1] for p in pairs]), scale=dict(pixel_size_a=model_px, diameter_px=diameter_px_model))
    return root / "model" / "best.pt"


def cryoseg(*args) -> float:
    "Run `cryoseg <args>` as a child process; its wall seconds."
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cryoseg.cli", *map(str, args), "--quiet"], check=True)
    return time.perf_counter() - t


def one_path(root: Path, model: Path, mics: Path, tag: str, device: str, crf: str, tta: str, extra=()) -> dict:
    pred, picks = root / f"pred-{tag}", root / f"picks-{tag}"
    t_pred = cryoseg("predict", "--model", model, "--data", mics, "--out", pred, "--device", device, "--crf", crf,
                     "--tta", tta, *extra)
    probs = pred / ("probabilities_crf" if crf != "none" else "probabilities")
    t_pick = cryoseg("pick", "--probs", probs, "--out", picks)
    rec = json.loads((pred / "cryoseg-predict.json").read_text())["results"]
    return dict(predict_s=t_pred, pick_s=t_pick, net_s=rec["seconds_predict"], crf_s=rec["seconds_crf"], picks=picks)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4, help="micrographs (default 4)")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--crf", default="none", help="none (the default of predict), torch, cpu, gpu")
    ap.add_argument("--tta", default="rot180", help="predict's test-time symmetry: rot180 (its default), none, dihedral")
    ap.add_argument("--no-full", action="store_true", help="skip the full-resolution baseline")
    ap.add_argument("--keep", default=None, help="work in this folder and keep it")
    a = ap.parse_args(argv)
    from cryoseg.cli.common import machine_info
    load0 = " ".join(f"{x:.1f}" for x in os.getloadavg())
    d_orig, bin_f = 160.0, 4.0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.keep or tmp)
        mics, model = make_inputs(root, a.n, a.size, d_orig), make_model(root, bin_f, d_orig / bin_f)
        rows = {"binned (default)": one_path(root, model, mics, "binned", a.device, a.crf, a.tta)}
        if not a.no_full:
            rows["full resolution (--no-rescale)"] = one_path(root, model, mics, "full", a.device, a.crf, a.tta,
                                                              ["--no-rescale"])
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"machine: {machine_info(a.device)['description']}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"{a.n} micrographs of {a.size}² at 1 Å/px, model at {bin_f:g} Å/px, --crf {a.crf}, --tta {a.tta}, "
          f"device {a.device}; load average before: {load0}\n")
    print("| path | predict s/mic | of which network | of which CRF | pick s/mic | total s/mic |")
    print("|---|---|---|---|---|---|")
    for k, r in rows.items():
        tot = (r["predict_s"] + r["pick_s"]) / a.n
        print(f"| {k} | {r['predict_s'] / a.n:.2f} | {r['net_s'] / a.n:.2f} | {r['crf_s'] / a.n:.2f} | "
              f"{r['pick_s'] / a.n:.2f} | {tot:.2f} |")
    if len(rows) == 2:
        b, f = (sum(rows[k][s] for s in ("predict_s", "pick_s")) for k in rows)
        print(f"\nbinned vs full resolution, same process session: {f / b:.1f}x faster end to end")
    print(f"peak resident memory of one command: {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()

"""Training benchmarks for cryoseg (04_data, 05_models, 06_train, 06a_predict). Not a test: prints a Markdown report.

1. Time to target: wall time for the default U-Net (`TrainConfig()` defaults) to reach a validation pixel IoU
   of `--target-iou` (0.85) on the default synthetic set (`SimConfig(snr=--snr)`, 256² micrographs,
   `--n-train` for training and `--n-val` for validation), with the picking F1 of the final model.
   Next to it, a *shape-blind oracle*: the IoU of discs drawn at the true centres (best diameter, chosen on
   the validation set itself) against the labels. With footprint labels (the default: projection > 10 % of its
   maximum, irregular and orientation-dependent) a network at low SNR can only beat it by seeing each
   footprint's shape through the noise, so it says how demanding a given IoU target is.
2. Throughput: training tiles/s (forward + backward + AdamW step, batch `--batch` of `--size`² crops, channels-last
   as in `fit`) for each
   model in `MODEL_NAMES`, on the CPU and on CUDA when present.
3. Memory (`--memory`): peak resident memory of `predict_tiled` (default tiles 512², overlap 64) on one
   `--memory-size`² micrograph (default 4096²), each case in a fresh process: the peak growth while predicting
   (the peak is reset just before, `/proc/self/clear_refs`) and the whole process's peak (imports, model and
   micrograph included). Cases: a one-layer network (the blending alone), the default U-Net, and the default
   U-Net followed by `cryoseg.crf.crf_tiled`. Linux only.

    python bench/train.py                      # everything, CPU threads = all cores
    python bench/train.py --threads 2 --skip-throughput
    python bench/train.py --models unet lraspp_mobilenet_v3_large --steps 3
    python bench/train.py --memory --skip-fit --skip-throughput
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import torch
from cryoseg.core import describe_machine


class _Reached(Exception):
    pass


def disc_oracle_iou(results, diameters=None) -> tuple[float, float]:
    "Best IoU over `diameters` of discs at the true centres against the masks of `results`; `(iou, diameter_px)`."
    from cryoseg.labels import disc_labels
    d0 = float(np.nanmedian(np.concatenate([r.particles["diameter_px"].to_numpy() for r in results])))
    diameters = np.arange(0.4, 1.21, 0.04) * d0 if diameters is None else diameters
    best = (0.0, d0)
    for d in diameters:
        inter = union = 0
        for r in results:
            m, t = disc_labels(r.mask.shape, r.particles, diameter_px=float(d))[0] > 0, r.mask > 0
            inter += int((m & t).sum()); union += int((m | t).sum())
        best = max(best, (inter / max(union, 1), float(d)))
    return best


def time_to_target(args, device: torch.device) -> dict:
    from cryoseg.simulate import SimConfig, simulate_micrograph
    from cryoseg.train import TrainConfig, fit
    from cryoseg.predict import predict_tiled
    from cryoseg.pick import pick_particles
    from cryoseg.metrics import picking_metrics
    sim = SimConfig(snr=args.snr)
    t0 = time.perf_counter()
    res = [simulate_micrograph(cfg=sim, seed=s) for s in range(args.n_train + args.n_val)]
    t_sim = time.perf_counter() - t0
    tr, va = res[:args.n_train], res[args.n_train:]
    if args.labels == "disc":
        from cryoseg.labels import disc_labels
        for r in res:
            r.mask = disc_labels(r.mask.shape, r.particles)[0]      # discs of each particle's diameter_px
    oracle_iou, oracle_d = disc_oracle_iou(va)
    cfg = TrainConfig(epochs=args.max_epochs if args.max_epochs else TrainConfig().epochs,
                      device=str(device), progress=False)
    log = []
    t_start = time.perf_counter()

    def cb(row):
        log.append(dict(epoch=row["epoch"], wall_s=time.perf_counter() - t_start, val_iou=row["val_iou"]))
        if args.stop_at_target and row["val_iou"] >= args.target_iou:
            raise _Reached

    try:
        out = fit(cfg, ([r.image for r in tr], [r.mask for r in tr]), ([r.image for r in va], [r.mask for r in va]),
                  callback=cb)
        model = out["model"]
    except _Reached:
        out, model = None, None
    wall = time.perf_counter() - t_start
    hit = next((r for r in log if r["val_iou"] >= args.target_iou), None)
    f1 = None
    if model is not None:
        diam = float(np.nanmedian(res[0].particles["diameter_px"])) if "diameter_px" in res[0].particles else 29.0
        picks, truth = [], []
        for i, r in enumerate(va):
            p = predict_tiled(model, r.image, device=device)
            picks.append(pick_particles(p, diameter_px=diam, micrograph=f"v{i}"))
            t = r.particles.copy(); t["micrograph"] = f"v{i}"; truth.append(t)
        f1 = picking_metrics(pd.concat(picks), pd.concat(truth), diameter_px=diam)["f1"]
    return dict(device=describe_machine(device), snr=args.snr, labels=args.labels, n_train=args.n_train, n_val=args.n_val,
                sim_s=round(t_sim, 1), disc_oracle_iou=round(oracle_iou, 3), disc_oracle_diameter_px=round(oracle_d, 1),
                epochs_run=len(log), fit_wall_s=round(wall, 1), best_val_iou=round(max(r["val_iou"] for r in log), 3),
                target_iou=args.target_iou, reached_at_epoch=None if hit is None else hit["epoch"] + 1,
                reached_after_s=None if hit is None else round(hit["wall_s"], 1),
                picking_f1=None if f1 is None else round(f1, 3), curve=log)


def throughput(name: str, device: torch.device, batch: int, size: int, steps: int) -> dict:
    from cryoseg.models import get_model, count_parameters
    from cryoseg.train import seg_loss
    torch.manual_seed(0)
    model = get_model(name).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, size, size, device=device)
    y = (torch.rand(batch, size, size, device=device) > 0.9).long()
    amp = device.type == "cuda"
    model = model.to(memory_format=torch.channels_last); x = x.contiguous(memory_format=torch.channels_last)  # as `fit`

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = seg_loss(logits.float(), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

    step()                                            # warm-up
    if device.type == "cuda": torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps): step()
    if device.type == "cuda": torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    return dict(model=name, device=device.type, parameters=count_parameters(model), batch=batch, size=size,
                step_s=round(dt, 3), tiles_per_s=round(batch / dt, 2))


_MEMORY_CASE = """
import json, sys, numpy as np, torch
from cryoseg.core import set_threads
set_threads(1)
from cryoseg.predict import predict_tiled
from cryoseg.models import get_model
kind, n, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def status(k):
    return next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith(k))
net = torch.nn.Conv2d(1, 2, 3, padding=1) if kind == "conv" else get_model("unet")
img = (100 + 3 * np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)).astype(np.float32)
predict_tiled(net, img[:600, :600], device=device)                       # warm-up (allocator, oneDNN)
if kind == "unet+crf":
    from cryoseg.crf import crf_tiled
    crf_tiled(predict_tiled(net, img[:600, :600], device=device), img[:600, :600], device=device)
open("/proc/self/clear_refs", "w").write("5")                           # reset the peak
base = status("VmRSS")
prob = predict_tiled(net, img, device=device)
if kind == "unet+crf":
    prob = crf_tiled(prob, img, device=device)
cuda = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
print(json.dumps(dict(case=kind, size=n, device=device, base_mb=round(base), added_peak_mb=round(status("VmHWM") - base),
                      process_peak_mb=round(status("VmHWM")), cuda_peak_mb=cuda, micrograph_mb=round(img.nbytes / 2**20))))
"""


def memory(size: int, device: str, cases=("conv", "unet", "unet+crf")) -> list[dict]:
    "Peak memory of `predict_tiled` (and the CRF after it) on a `size`² micrograph, each case in a fresh process."
    import os
    import subprocess
    import sys
    rows = []
    for kind in cases:
        r = subprocess.run([sys.executable, "-c", _MEMORY_CASE, kind, str(size), device], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        if r.returncode:
            raise RuntimeError(f"memory case {kind}: {r.stderr[-2000:]}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"  {rows[-1]}", flush=True)
    return rows


def main():
    from cryoseg.models import MODEL_NAMES
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all available cores)")
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--labels", choices=("footprint", "disc"), default="footprint",
                    help="training/validation labels: exact footprints (default) or discs of the particle diameter")
    ap.add_argument("--n-train", type=int, default=6)
    ap.add_argument("--n-val", type=int, default=2)
    ap.add_argument("--target-iou", type=float, default=0.85)
    ap.add_argument("--max-epochs", type=int, default=None, help="epochs of the run (default: TrainConfig's)")
    ap.add_argument("--stop-at-target", action="store_true", help="stop as soon as the target IoU is reached")
    ap.add_argument("--models", nargs="*", default=list(MODEL_NAMES))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per model (after one warm-up)")
    ap.add_argument("--skip-fit", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--memory", action="store_true", help="peak memory of predict_tiled on one large micrograph")
    ap.add_argument("--memory-size", type=int, default=4096)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--devices", default=None, help="comma-separated, e.g. cuda (default: cpu, and cuda when present)")
    args = ap.parse_args()
    from cryoseg.core import set_threads
    set_threads(args.threads)
    devices = ([torch.device(d) for d in args.devices.split(",")] if args.devices else
               [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else []))
    results = dict(machine={d.type: describe_machine(d) for d in devices}, torch=torch.__version__)
    for d in devices:
        print(f"- {d.type}: {results['machine'][d.type]}")
    if not args.skip_fit:
        results["time_to_target"] = []
        for d in devices:
            r = time_to_target(args, d)
            results["time_to_target"].append(r)
            curve = " ".join(f"{c['epoch'] + 1}:{c['val_iou']:.2f}@{c['wall_s']:.0f}s" for c in r["curve"])
            print(f"\n### Default U-Net, {d.type}: val IoU ≥ {r['target_iou']} "
                  + (f"after {r['reached_after_s']} s (epoch {r['reached_at_epoch']})" if r["reached_after_s"] is not None
                     else f"not reached in {r['epochs_run']} epochs / {r['fit_wall_s']} s (best {r['best_val_iou']})")
                  + f"; picking F1 of the best model {r['picking_f1']}; SNR {r['snr']}, {r['labels']} labels, "
                  f"{r['n_train']} train / {r['n_val']} val micrographs 256²; shape-blind disc oracle IoU "
                  f"{r['disc_oracle_iou']} (d = {r['disc_oracle_diameter_px']} px)\n\nepoch:val IoU@wall: {curve}")
    if not args.skip_throughput:
        rows = []
        for d in devices:
            for name in args.models:
                rows.append(throughput(name, d, args.batch, args.size, args.steps))
                print(f"  {rows[-1]}", flush=True)
        results["throughput"] = rows
        print("\n### Training throughput (batch %d, %d² crops)\n" % (args.batch, args.size))
        print(pd.DataFrame(rows).to_markdown(index=False) if _has_tabulate() else pd.DataFrame(rows).to_string(index=False))
    if args.memory:
        results["memory"] = [r for d in devices for r in memory(args.memory_size, d.type)]
        print(f"\n### Peak memory of predict_tiled on one {args.memory_size}² micrograph (tiles 512², overlap 64)\n")
        print(pd.DataFrame(results["memory"]).to_string(index=False))
    if args.json:
        with open(args.json, "w") as f: json.dump(results, f, indent=1)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()

"""Fault replay: what a killed run, a full disk, two writers or a bad file do to a folder of work.

    OMP_NUM_THREADS=1 python bench/faults.py            # about 3 minutes on an idle 2-core CPU
    python bench/faults.py --n 24 --keep /tmp/faults    # keep the folders to look at them
    python bench/faults.py --skip demo                  # leave out the (slowest) demo case

Simulates a small data set with `cryoseg simulate` (tiny micrographs), makes reference outputs with
clean runs of `label`, `predict`, `pick` and `evaluate`, then replays each fault through the real
command line (subprocesses) and compares what is left, after the rerun, with the reference:

* kill -9 during a folder run (label, predict, pick), twice, then a rerun: resumes, takes over the lock;
* a full disk: a small tmpfs mounted for the output folder (as root; else skipped, with a message),
  and a file size limit (RLIMIT_FSIZE, any user): one line naming the path, no partial file, rerun;
* two writers on one output folder (`pick --force` with two thresholds): the second is refused;
* a folder with an unreadable micrograph: the others done, listed in failures.tsv, rerun resumes;
* an output folder that is an input folder (`label cryoppp --data X --out X --bin 2 --force`): refused;
* `demo --force` into a folder holding a file of the user's: that file survives.

Per case one line: "nothing lost", or what was lost. The exit code is 1 if anything was lost.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ENV = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
LOST: list[str] = []


def cli(*args, check=True, limit_bytes=None, timeout=600):
    "Run `cryoseg <args>` in a subprocess (optionally under a file size limit); returns the CompletedProcess."
    def fsize():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.RLIM_INFINITY))
    r = subprocess.run([sys.executable, "-m", "cryoseg.cli", *map(str, args)], capture_output=True, text=True,
                       env=ENV, timeout=timeout, preexec_fn=fsize if limit_bytes else None)
    if check and r.returncode != 0:
        raise SystemExit(f"cryoseg {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return r


def start(*args, wrapper: str | None = None):
    "Start `cryoseg <args>` in a subprocess (through the Python `wrapper` code, given the args, if any)."
    cmd = [sys.executable, "-c", wrapper, *map(str, args)] if wrapper else [sys.executable, "-m", "cryoseg.cli", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)


def outputs(folder: Path) -> dict[str, bytes]:
    "The outputs of a run: every regular file under `folder` but hidden ones and the run's own config (times, host)."
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)
            and not p.name.startswith("cryoseg-")}


def unreadable(folder: Path) -> list[str]:
    "The final-named output files under `folder` that do not read back completely (a partial write would)."
    import pandas as pd
    from cryoseg.coords import read_particles
    from cryoseg.io import read_micrograph
    bad = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or any(s.startswith(".") for s in p.relative_to(folder).parts):
            continue
        try:
            if p.suffix == ".mrc":
                read_micrograph(p, check=False)
            elif p.suffix in (".star", ".box") or (p.suffix == ".csv" and p.parent != folder):
                read_particles(p, allow_empty=True)
            elif p.suffix in (".csv", ".tsv"):
                pd.read_csv(p, sep="," if p.suffix == ".csv" else "\t")
            elif p.suffix == ".json":
                json.loads(p.read_text())
        except Exception as e:  # noqa: BLE001 - any failure to read back is what this looks for
            bad.append(f"{p.relative_to(folder)} ({str(e).splitlines()[0][:80]})")
    return bad


def temp_files(folder: Path) -> int:
    "Temporary files a killed write left (hidden `.x.<hex>.tmp`: readers ignore them)."
    return sum(1 for p in folder.rglob(".*.tmp"))


def report(case: str, lost: list[str], notes: list[str] = ()) -> None:
    print(f"{case:<52} {'nothing lost' if not lost else 'LOST: ' + '; '.join(lost[:5])}", flush=True)
    for n in notes:
        print(f"{'':<6}{n}")
    LOST.extend(f"{case}: {x}" for x in lost)


def compare(got: Path, ref: Path) -> list[str]:
    "What differs between the outputs in `got` and those of the reference run `ref`."
    a, b = outputs(got), outputs(ref)
    missing = sorted(set(b) - set(a))
    extra = sorted(set(a) - set(b))
    changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    return ([f"missing {', '.join(missing[:4])}"] if missing else []) + \
           ([f"unexpected {', '.join(extra[:4])}"] if extra else []) + \
           ([f"different {', '.join(changed[:4])}"] if changed else [])


# --- set-up ------------------------------------------------------------------------------------------

def setup(root: Path, n: int, size: int) -> dict:
    "A simulated data set, graded probability maps, a tiny model and the reference outputs of every command."
    import numpy as np
    from cryoseg.io import read_mask, write_micrograph
    t0 = time.perf_counter()
    cli("simulate", "--out", root / "sim", "--n-micrographs", n, "--set", f"shape=[{size},{size}]",
        "--set", "n_particles=5", "--quiet", "--seed", 1)
    for k in range(n):                     # P = 0.9 on particles 1-3, 0.5 on the others: thresholds 0.3 and 0.7 differ
        inst = read_mask(root / "sim" / "instances" / f"mic_{k:04d}.mrc", instance=True)
        prob = np.where((inst >= 1) & (inst <= 3), 0.9, np.where(inst > 3, 0.5, 0.0)).astype("float32")
        write_micrograph(root / "probs" / f"mic_{k:04d}.mrc", prob)
    cli("label", "synthetic", "--data", root / "sim", "--out", root / "ref" / "label", "--kind", "disc", "--quiet")
    cli("train", "--data", root / "ref" / "label", "--out", root / "model", "--device", "cpu", "--epochs", 1,
        "--set", "samples_per_epoch=8", "--set", "crop_size=32", "--set", "batch_size=2",
        "--set", 'model_kwargs={"depth": 2, "width": 4}', "--quiet")
    args = dict(
        label=["label", "synthetic", "--data", root / "sim", "--kind", "disc", "--quiet"],
        predict=["predict", "--model", root / "model" / "best.pt", "--data", root / "sim", "--tile-size", 64,
                 "--overlap", 8, "--device", "cpu", "--quiet"],
        pick=["pick", "--probs", root / "probs", "--diameter-px", 12, "--threshold", 0.3, "--formats", "star,box,csv",
              "--quiet"])
    for name in ("predict", "pick"):
        cli(*args[name], "--out", root / "ref" / name)
    cli("pick", "--probs", root / "probs", "--diameter-px", 12, "--threshold", 0.7, "--formats", "star,box,csv",
        "--quiet", "--out", root / "ref" / "pick07")
    print(f"set-up: {n} micrographs of {size}² px, reference runs in {time.perf_counter() - t0:.0f} s\n", flush=True)
    return args


# --- the cases ---------------------------------------------------------------------------------------

def case_kill(root: Path, name: str, args: list, count: str) -> None:
    "kill -9 a folder run twice (after a third and two thirds of its outputs), then rerun; compare with the reference."
    out, ref = root / f"kill-{name}", root / "ref" / name
    n_total = len(list((ref / count).iterdir()))
    notes, kills = [], 0
    for frac in (1 / 3, 2 / 3):
        p = start(*args, "--out", out)
        while p.poll() is None and len(list((out / count).glob("*"))) < max(1, int(frac * n_total)):
            time.sleep(0.005)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            done = len(list((out / count).glob("*")))
            bad = unreadable(out)
            notes.append(f"killed after {done}/{n_total} outputs: {len(bad)} unreadable final files, "
                         f"{temp_files(out)} temporary files left (hidden, ignored by readers)")
            if bad:
                report(f"kill -9 during {name}", [f"partial file {b}" for b in bad], notes)
                return
    r = cli(*args, "--out", out, check=False)
    took_over = "taking over the lock" in r.stderr
    notes.append(f"rerun: exit {r.returncode}" + ("; took over the dead run's lock" if took_over else "")
                 + ("" if kills else "; the run ended before a kill could land (machine too fast?)"))
    lost = compare(out, ref) if r.returncode == 0 else [f"rerun failed: {r.stderr.strip()[-200:]}"]
    report(f"kill -9 during {name} ({kills} kills), rerun", lost, notes)


def case_full_disk_tmpfs(root: Path, args: list) -> None:
    "predict and evaluate into a tmpfs too small for their outputs; then the same tmpfs made larger, and a rerun."
    if os.geteuid() != 0 or shutil.which("mount") is None:
        report("full disk (tmpfs)", [], ["skipped: mounting a tmpfs needs root (the file size limit case runs instead)"])
        return
    mnt = root / "tmpfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        report("full disk (tmpfs)", [], ["skipped: mount -t tmpfs failed (no permission in this container?)"])
        return
    try:
        out = mnt / "predict"
        r = cli(*args, "--out", out, check=False)
        line = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        lost = [] if r.returncode == 2 and str(mnt) in line and "No space left" in line else \
            [f"unexpected result: exit {r.returncode}, {line[:160]}"]
        lost += [f"partial file {b}" for b in unreadable(out)]
        notes = [f"disk full: exit {r.returncode}: {line[:150]}",
                 f"{len(list((out / 'probabilities').glob('*.mrc')))} complete maps kept, {temp_files(out)} temporary files"]
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        r = cli(*args, "--out", out, check=False)
        notes.append(f"after freeing space, rerun: exit {r.returncode}")
        lost += compare(out, root / "ref" / "predict") if r.returncode == 0 else [f"rerun failed: {r.stderr[-200:]}"]
        report("full disk during predict (tmpfs), rerun", lost, notes)
        ev = ["evaluate", "--picks", root / "ref" / "pick" / "star", "--truth", root / "sim", "--diameter-px", 12]
        cli(*ev, "--out", root / "ref" / "evaluate")
        shutil.rmtree(out)
        subprocess.run(["mount", "-o", "remount,size=8k", str(mnt)], check=True)
        r = cli(*ev, "--out", mnt / "eval", check=False)
        notes = [f"disk full: exit {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1][:150]}"]
        lost = [f"partial file {b}" for b in unreadable(mnt / "eval")] if (mnt / "eval").exists() else []
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        r = cli(*ev, "--out", mnt / "eval", check=False)
        notes.append(f"after freeing space, rerun: exit {r.returncode} (not refused)")
        lost += compare(mnt / "eval", root / "ref" / "evaluate") if r.returncode == 0 else [f"rerun failed: {r.stderr[-200:]}"]
        report("full disk during evaluate (tmpfs), rerun", lost, notes)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def case_file_size_limit(root: Path, args: list) -> None:
    """pick under RLIMIT_FSIZE (a write fails with EFBIG, like a full disk for the files it hits), then a plain rerun.
    The limit lies between the size of the run's config and that of its particles.star: the run fails at its end."""
    out, ref = root / "fsize-pick", root / "ref" / "pick"
    cfg, star = (ref / "cryoseg-pick.json").stat().st_size, (ref / "particles.star").stat().st_size
    limit = (cfg + star) // 2 if star > cfg + 256 else 300
    r = cli(*args, "--out", out, check=False, limit_bytes=limit)
    line = (r.stderr.strip().splitlines() or [""])[-1]
    lost = [] if r.returncode == 2 and str(out) in line and "File too large" in line else \
        [f"unexpected result: exit {r.returncode}, {line[:160]}"]
    lost += [f"partial file {b}" for b in unreadable(out)]
    notes = [f"limit {limit} bytes: exit {r.returncode}: {line[:150]}",
             f"{len(list((out / 'csv').glob('*.csv')))} micrographs complete, {temp_files(out)} temporary files"]
    r = cli(*args, "--out", out, check=False)
    notes.append(f"rerun without the limit: exit {r.returncode}")
    lost += compare(out, root / "ref" / "pick") if r.returncode == 0 else [f"rerun failed: {r.stderr[-200:]}"]
    report("file size limit (EFBIG) during pick, rerun", lost, notes)


SLOW_PICK = textwrap.dedent("""
    import sys, time
    import cryoseg.pick
    real = cryoseg.pick.pick_particles
    def slow(*a, **kw):
        time.sleep(float(sys.argv[1]))
        return real(*a, **kw)
    cryoseg.pick.pick_particles = slow
    from cryoseg.cli.main import main
    sys.exit(main(sys.argv[2:]))""")


def case_two_writers(root: Path) -> None:
    """Two `pick --force` on one folder with thresholds 0.3 and 0.7: a slow one (50 ms a map) and a fast one
    started once the slow one has written its first file. Every file must come from one run only."""
    out = root / "two-writers"
    base = ["pick", "--probs", root / "probs", "--diameter-px", 12, "--formats", "star,box,csv", "--quiet", "--force",
            "--out", out]
    slow = start("0.05", *base, "--threshold", 0.3, wrapper=SLOW_PICK)
    while not list(out.glob("star/*.star")) and slow.poll() is None:
        time.sleep(0.01)
    fast = start("0", *base, "--threshold", 0.7, wrapper=SLOW_PICK)
    codes = [p.wait() for p in (slow, fast)]
    refused = "another cryoseg run is writing into this folder" in fast.stderr.read()
    got = outputs(out)
    r3, r7 = outputs(root / "ref" / "pick"), outputs(root / "ref" / "pick07")
    per = [k for k in got if "/" in k]
    from3, from7 = sum(got[k] == r3.get(k) for k in per), sum(got[k] == r7.get(k) for k in per)
    lost = [] if per and (from3 == len(per) or from7 == len(per)) else \
        [f"mixed outputs: {from3} files from threshold 0.3, {from7} from 0.7, of {len(per)}"]
    report("two writers on one folder (pick --force)", lost,
           [f"exit codes {codes}; second writer " + ("refused with one line" if refused else "not refused (ran after?)")])


def case_bad_file_and_resume(root: Path, args: list) -> None:
    "predict over a folder with one unreadable micrograph, then (the file removed) a rerun that resumes."
    data = root / "with-bad"
    shutil.copytree(root / "sim" / "micrographs", data)
    (data / "mic_0001b.mrc").write_bytes(b"this is not an MRC file")
    a = [x if x != root / "sim" else data for x in args]
    out = root / "bad-predict"
    r = cli(*a, "--out", out, check=False)
    fails = (out / "failures.tsv").read_text().splitlines() if (out / "failures.tsv").exists() else []
    lost = [] if r.returncode == 1 and len(fails) == 2 and "mic_0001b" in fails[1] else \
        [f"unexpected result: exit {r.returncode}, failures {fails[1:]}"]
    notes = [f"exit {r.returncode}; failures.tsv: {fails[1][:120] if len(fails) > 1 else '-'}"]
    (data / "mic_0001b.mrc").unlink()
    r = cli(*a, "--out", out, check=False)
    rec = json.loads((out / "cryoseg-predict.json").read_text())
    notes.append(f"rerun: exit {r.returncode}, {rec['results'].get('n_skipped')} kept, {rec['results'].get('n_done')} done")
    lost += compare(out, root / "ref" / "predict") if r.returncode == 0 else [f"rerun failed: {r.stderr[-200:]}"]
    report("an unreadable micrograph in predict, resume", lost, notes)


def case_out_is_input(root: Path) -> None:
    "`label cryoppp --data X --out X --bin 2 --force` must leave the user's micrographs alone."
    from cryoseg.datasets import make_cryoppp_sample
    ppp = make_cryoppp_sample(root / "ppp", n_micrographs=2, seed=0)
    before = outputs(ppp)
    r = cli("label", "cryoppp", "--data", ppp, "--out", ppp, "--bin", 2, "--force", "--quiet", check=False)
    lost = [] if outputs(ppp) == before else ["the input folder changed"]
    lost += [] if r.returncode == 2 else [f"not refused (exit {r.returncode})"]
    report("output folder = input folder (label cryoppp)", lost,
           [f"exit {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1][:150]}"])


def case_demo_force(root: Path) -> None:
    "`demo --force` over an earlier demo: the user's files in data/, model/, figures/ survive."
    out = root / "demo"
    cli("demo", "--quick", "--out", out, "--device", "cpu", "--quiet")
    mine = {out / "data" / "notes.txt": b"mine", out / "model" / "other.pt": b"mine", out / "figures" / "x.png": b"mine"}
    for p, b in mine.items():
        p.write_bytes(b)
    r = cli("demo", "--quick", "--out", out, "--device", "cpu", "--quiet", "--force", check=False)
    lost = [str(p.relative_to(out)) for p, b in mine.items() if not p.exists() or p.read_bytes() != b]
    lost += [] if r.returncode == 0 else [f"demo --force failed: {r.stderr[-200:]}"]
    report("demo --force keeps the user's files", lost, [f"exit {r.returncode}"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=24, help="micrographs in the simulated folder (default 24)")
    ap.add_argument("--size", type=int, default=128, help="micrograph side in pixels (default 128)")
    ap.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temporary folder)")
    ap.add_argument("--skip", default="", help="comma-separated cases to leave out: kill,disk,writers,bad,input,demo")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    from cryoseg.core import describe_machine
    print(f"machine: {describe_machine()}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        args = setup(root, a.n, a.size)
        if "kill" not in skip:
            case_kill(root, "label", args["label"], "masks")
            case_kill(root, "predict", args["predict"], "probabilities")
            case_kill(root, "pick", args["pick"], "csv")
        if "disk" not in skip:
            case_full_disk_tmpfs(root, args["predict"])
            case_file_size_limit(root, args["pick"])
        if "writers" not in skip:
            case_two_writers(root)
        if "bad" not in skip:
            case_bad_file_and_resume(root, args["predict"])
        if "input" not in skip:
            case_out_is_input(root)
        if "demo" not in skip:
            case_demo_force(root)
    print(f"\n{'everything kept' if not LOST else f'{len(LOST)} loss(es)'} in {time.perf_counter() - t0:.0f} s")
    sys.exit(1 if LOST else 0)


if __name__ == "__main__":
    main()

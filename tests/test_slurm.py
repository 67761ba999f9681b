"""docs/slurm_predict.sh, the SLURM job-array template: valid bash, #SBATCH lines where sbatch reads them, only
options that the `cryoseg` parser knows, and, run for real as the two tasks of a 2-task array (SLURM_ARRAY_TASK_ID
and SLURM_ARRAY_TASK_COUNT set by hand; no SLURM needed), every micrograph predicted and picked by exactly one
task; resubmitting a task resumes it."""
import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cryoseg.cli.common import shard_items
from cryoseg.cli.main import make_parser

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "slurm_predict.sh"
# a cryoseg command in the script or its comments: `$CRYOSEG <cmd> ...`, `-m cryoseg.cli <cmd> ...`, `cryoseg <cmd> ...`
COMMAND = re.compile(r"(?:\$CRYOSEG|\$\{CRYOSEG\}|-m cryoseg\.cli|`cryoseg)\s+([a-z]+)([^`\n]*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def script_text() -> str:
    return SCRIPT.read_text(encoding="utf-8").replace("\\\n", " ")


def parser_options() -> dict[str, set[str]]:
    "{subcommand: its option strings} from the real `cryoseg` parser."
    sub = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()}


def test_script_is_valid_bash():
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_sbatch_lines_come_before_the_first_command():
    "sbatch stops reading #SBATCH lines at the first command: they must all come before it."
    lines = SCRIPT.read_text(encoding="utf-8").splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#"))
    sbatch = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    assert sbatch and max(sbatch) < first
    options = " ".join(lines[i] for i in sbatch)
    assert "--gres=gpu:1" in options and "--time=" in options
    assert "#   #SBATCH --cpus-per-task" in SCRIPT.read_text(encoding="utf-8")        # the CPU variant, in words


def test_every_cryoseg_option_in_the_script_exists():
    known = parser_options()
    used = [(cmd, FLAG.findall(rest)) for cmd, rest in COMMAND.findall(script_text())]
    assert {"predict", "pick", "train"} <= {cmd for cmd, _ in used}, used
    bad = [f"cryoseg {cmd} {flag}" for cmd, flags in used for flag in flags if flag not in known.get(cmd, ())]
    assert not bad, f"options the parser does not know: {bad}"
    assert all("--shard" in flags for cmd, flags in used if cmd in ("predict", "pick") and flags)


def test_the_option_check_can_fail():
    known = parser_options()
    cmd, rest = COMMAND.findall("$CRYOSEG predict --model m --data d --out o --shards 0/2")[0]
    assert [f for f in FLAG.findall(rest) if f not in known[cmd]] == ["--shards"]


def test_without_an_array_the_script_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "N_SHARDS"))}
    r = subprocess.run(["bash", str(SCRIPT), "m.pt", "mics", str(tmp_path / "out")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "job array" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


# --- the two tasks of an array, for real ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    "A U-Net (depth 2, width 4) trained for one epoch on noise, and six 64² micrographs in both shards of 2."
    from cryoseg.testing import tiny_model
    return tiny_model(tmp_path_factory.mktemp("slurm"), n=6, name="mic_{k:04d}")


def run_task(i: int, count: int, model, mics, out, **env_extra):
    "The script as SLURM would run task `i` of an array of `count` tasks."
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "N_SHARDS"))}
    env.update(SLURM_ARRAY_TASK_ID=str(i), SLURM_ARRAY_TASK_COUNT=str(count), OMP_NUM_THREADS="1",
               CRYOSEG=f"{sys.executable} -m cryoseg.cli",
               PREDICT_ARGS="--tile-size 64 --overlap 8 --device cpu --threads 1", PICK_ARGS="--diameter-px 8",
               **env_extra)
    return subprocess.run(["bash", str(SCRIPT), str(model), str(mics), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)


def stems(folder: Path, suffix: str) -> list[str]:
    return sorted(p.stem for p in folder.glob(f"*{suffix}") if not p.name.startswith("."))


def test_two_array_tasks_cover_every_micrograph_once_and_resume(tiny, tmp_path):
    model, mics = tiny
    out = tmp_path / "run"
    names = sorted(p.stem for p in mics.glob("*.mrc"))
    shards = [sorted(Path(p).stem for p in shard_items([str(mics / f"{n}.mrc") for n in names], f"{i}/2"))
              for i in range(2)]
    assert all(shards) and sorted(shards[0] + shards[1]) == names            # both tasks have work
    for i in range(2):
        r = run_task(i, 2, model, mics, out)
        assert r.returncode == 0, r.stderr[-3000:]
        done = sorted(shards[0] + (shards[1] if i else []))
        assert stems(out / "probabilities", ".mrc") == done, (i, r.stderr[-2000:])   # this task's, no other
        assert stems(out / "picks" / "star", ".star") == done
        for cmd, folder in (("predict", out), ("pick", out / "picks")):
            doc = json.loads((folder / f"cryoseg-{cmd}.shard-{i}-of-2.json").read_text())
            assert doc["status"] == "complete" and doc["config"]["shard"] == f"{i}/2", doc
            assert doc["results"]["n_micrographs"] == len(shards[i]), doc["results"]
    assert not list(out.rglob("failures*.tsv"))
    # resubmitting task 1 alone (`sbatch --array=1 --export=ALL,N_SHARDS=2`): SLURM says 1 task, N_SHARDS says 2
    per_mic = [p for p in out.rglob("*") if p.suffix in (".mrc", ".star", ".box") and not p.name.startswith(("particles", "."))]
    before = {p: p.stat().st_mtime_ns for p in per_mic}
    combined = (out / "picks" / "particles.shard-1-of-2.star").read_bytes()
    r = run_task(1, 1, model, mics, out, N_SHARDS="2")
    assert r.returncode == 0, r.stderr[-3000:]
    changed = [str(p.relative_to(out)) for p, t in before.items() if p.stat().st_mtime_ns != t]
    assert not changed, changed                                              # nothing redone ...
    assert (out / "picks" / "particles.shard-1-of-2.star").read_bytes() == combined   # ... the same table
    doc = json.loads((out / "cryoseg-predict.shard-1-of-2.json").read_text())
    assert doc["results"].get("n_skipped", len(shards[1])) == len(shards[1]), doc["results"]

"""docs/real_data.sh, the documented workflow for a user's own micrographs, run as written on a small generated
data set (4 labelled micrographs at 2 Å/px, STAR coordinates, 2 new micrographs): every command succeeds and the
picks come back in the new micrographs' own frame and names. Also: valid bash, only options the parser knows."""
import os
import re
import subprocess
from pathlib import Path

import numpy as np

from cryoseg.coords import read_star, write_particles
from cryoseg.io import write_micrograph
from cryoseg.testing import discs_in_noise

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "real_data.sh"


def test_script_is_valid_bash():
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_option_exists():
    from test_slurm import FLAG, parser_options
    known = parser_options()
    text = SCRIPT.read_text(encoding="utf-8").replace("\\\n", " ")
    used = re.findall(r"cryoseg ((?:label [a-z]+)|[a-z]+)([^\n]*)", text)
    assert {"label coords", "label masks", "train", "predict", "pick", "evaluate"} <= {c for c, _ in used}
    sub = {c: known[c.split()[0]] for c, _ in used if c.split()[0] in known}
    bad = []
    for cmd, rest in used:
        if cmd.startswith("label "):
            from cryoseg.cli.main import make_parser
            import argparse
            lab = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["label"]
            meth = next(a for a in lab._actions if isinstance(a, argparse._SubParsersAction)).choices[cmd.split()[1]]
            opts = {s for a in meth._actions for s in a.option_strings}
        else:
            opts = sub.get(cmd, set())
        bad += [f"cryoseg {cmd} {f}" for f in FLAG.findall(rest) if f not in opts]
    assert not bad, bad


def test_runs_as_written(tmp_path):
    d_px = 30.0                                                # 60 Å at 2 Å/px
    for k in range(6):
        img, parts = discs_in_noise((384, 384), n=14, diameter_px=d_px, snr=2.0, seed=k)
        folder, coords = ("mics", "coords") if k < 4 else ("new", None)
        write_micrograph(tmp_path / folder / f"m{k}.mrc", img, pixel_size_a=2.0)
        if coords:
            write_particles(tmp_path / coords / f"m{k}.star", parts.assign(micrograph=f"m{k}.mrc"))
    env = dict(os.environ, MICS=str(tmp_path / "mics"), COORDS=str(tmp_path / "coords"), NEW=str(tmp_path / "new"),
               WORK=str(tmp_path / "work"), DIAMETER_A="60", EPOCHS="2")
    r = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    picks = read_star(tmp_path / "work" / "picks" / "particles.star")
    assert picks.attrs["optics"]["pixel_size_a"] == 2.0
    assert set(picks["micrograph"]) <= {"m4.mrc", "m5.mrc"}
    for fmt in ("star", "box", "csv", "txt"):
        assert sorted(p.name for p in (tmp_path / "work" / "picks" / fmt).iterdir()) == [f"m4.{fmt}", f"m5.{fmt}"]
    assert np.all((picks["x"] >= 50) & (picks["x"] <= 383 - 50))       # --edge-px 50, in original pixels

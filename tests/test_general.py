"""The shipped general model (issue 19): it loads as a scale-free model with a picking threshold and a data card,
and `cryoseg predict --model general --diameter-a 300` then `cryoseg pick` find particles zero-shot in two real
EMPIAR-10028 test micrographs (the shipped sample; never used to train it), in their original 1024² frame.

The bounds are loose on purpose: bench/general.py measured the zero-shot model on the 5 test micrographs (see
BENCHMARKS.md, "A general model trained on simulations"); these two micrographs must stay well within reach of
those numbers, not reproduce them. Precision is capped near 0.77 by the sample's incomplete labels, lower here
because `cryoseg pick` keeps picks at the border that bench/general.py drops."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
from cli_helpers import assert_one_line_error, run

from cryoseg.cli.common import resolve_model
from cryoseg.cli.main import main
from cryoseg.coords import read_star
from cryoseg.datasets import REAL_SAMPLE_DIAMETER_PX, load_real_sample, real_sample_folder
from cryoseg.metrics import picking_metrics
from cryoseg.train import checkpoint_info

MICROGRAPHS = ["311_10028", "312_10028"]     # two of the sample's 5 test micrographs
# measured on these two through the CLI (the model's stored threshold, no border rule): recall 0.984, precision 0.643
# (2026-12-06); loose floors under them, so that a worse shipped model fails and run-to-run noise does not
MIN_RECALL, MIN_PRECISION = 0.85, 0.5


def test_the_shipped_model_is_scale_free_and_small():
    path = resolve_model("general")
    info = checkpoint_info(path)
    s = info["scale"]
    assert s["scale_free"] is True and s["diameter_px"] == pytest.approx(24.0)
    assert s["pixel_size_a"] is None and s["diameter_a"] is None          # no pixel size: it works at any
    kw = info["model_kwargs"]
    assert info["model_name"] == "unet" and (kw["depth"], kw["width"]) == (3, 16)      # the package default
    assert info["picking"] is not None and 0 < info["picking"]["threshold"] < 1
    assert "simulations" in info["picking"]["fitted_on"]                    # never a real label
    assert path.stat().st_size < 5e6, path.stat().st_size                  # a few MB at most


def test_the_data_card_says_what_it_was_trained_on():
    card = resolve_model("general").with_name("general.md")
    text = card.read_text(encoding="utf-8")
    for must in ("Only simulations", "seed", "min of training", "Scores", "cryoseg.randomize"):
        assert must in text, must


def test_general_without_a_diameter_is_a_one_line_error(tmp_path, capsys):
    mic = real_sample_folder() / "test" / "images" / f"{MICROGRAPHS[0]}.png"
    rc, _, err = run(capsys, "predict", "--model", "general", "--data", mic, "--out", tmp_path / "pred",
                     "--pixel-size", "5.36", "--quiet")
    assert_one_line_error(rc, err, "--diameter-a", "scale-free")
    assert not (tmp_path / "pred" / "probabilities").exists()              # refused before anything is written


@pytest.fixture(scope="module")
def picked(tmp_path_factory):
    root = tmp_path_factory.mktemp("general")
    (root / "mics").mkdir()
    for name in MICROGRAPHS:
        shutil.copy(real_sample_folder() / "test" / "images" / f"{name}.png", root / "mics")
    args = ["--quiet"]
    assert main(["predict", "--model", "general", "--diameter-a", "300", "--pixel-size", "5.36", "--data",
                 str(root / "mics"), "--out", str(root / "pred"), "--device", "cpu"] + args) == 0
    assert main(["pick", "--probs", str(root / "pred" / "probabilities"), "--out", str(root / "picks")] + args) == 0
    return root


def test_zero_shot_picks_find_real_particles(picked):
    picks = read_star(picked / "picks" / "particles.star")
    assert set(picks["micrograph"]) == {f"{n}.png" for n in MICROGRAPHS}
    assert picks.attrs["optics"]["pixel_size_a"] == pytest.approx(5.36)      # the original pixel size
    assert picks["x"].max() > 600 and picks["y"].max() > 600                  # the 1024² frame, not the binned one
    truth = pd.concat([r.particles for r in load_real_sample("test") if r.name in MICROGRAPHS], ignore_index=True)
    m = picking_metrics(picks, truth, REAL_SAMPLE_DIAMETER_PX, micrographs=[f"{n}.png" for n in MICROGRAPHS])
    assert m["recall"] > MIN_RECALL and m["precision"] > MIN_PRECISION, m

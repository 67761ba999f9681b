"""Real-size micrographs end to end through the command line, at their true scale (issue 14).

Six generated 4096² micrographs at 1 Å/px with 96 Å particles (96 px across) on an ice gradient: four are
labelled from PNG masks (`cryoseg label masks`, binned so particles are 24 px across, one held out for
validation), a U-Net is trained on them, and the two others are predicted at full size (predict bins them
itself to the model's 4 Å/px) and picked. The picks must come back in the original 4096² frame, under the
original file names, in every format, and find the particles: F1 >= 0.95 and a mean centre error under
2 original pixels (half a binned pixel). Labels made from STAR, BOX, CryoPPP CSV and Topaz coordinates must
give the same dataset as the masks.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cryoseg.cli.main import main
from cryoseg.coords import read_particles, read_star, write_particles
from cryoseg.io import read_mask, read_micrograph, write_micrograph
from cryoseg.metrics import picking_metrics
from cryoseg.particles import make_particles

SIZE, D_PX, N, TARGET_D = 4096, 96.0, 60, 24


def micrograph(seed: int):
    "A 4096² micrograph at 1 Å/px: dark soft-edged discs (few touching) on an ice gradient, noise σ = 2; (img, mask, table)."
    rng = np.random.default_rng(seed)
    xy = []
    while len(xy) < N:
        c = rng.uniform(D_PX, SIZE - D_PX, 2)
        if all(np.hypot(*(c - q)) > 1.05 * D_PX for q in xy):
            xy.append(c)
    xy = np.array(xy)
    img = rng.normal(0.0, 2.0, (SIZE, SIZE)).astype(np.float32)
    img += np.linspace(0, 3, SIZE, dtype=np.float32)[None, :]              # ice thickness gradient
    mask = np.zeros((SIZE, SIZE), np.uint8)
    r, w = D_PX / 2, int(D_PX)
    yy, xx = np.mgrid[-w:w + 1, -w:w + 1]
    for cx, cy in xy:
        ix, iy = int(round(cx)), int(round(cy))
        dist = np.hypot(xx + ix - cx, yy + iy - cy)
        sl = np.s_[iy - w:iy + w + 1, ix - w:ix + w + 1]
        img[sl] -= (1.5 / (1 + np.exp((dist - r) / 1.0))).astype(np.float32)
        mask[sl] |= (dist <= r).astype(np.uint8)
    return img, mask, make_particles(xy[:, 0], xy[:, 1], diameter_px=D_PX)


def cli(*args) -> int:
    return main([str(a) for a in args] + ["--quiet"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from PIL import Image
    root = tmp_path_factory.mktemp("scale")
    truth = {}
    for k in range(6):
        img, mask, parts = micrograph(seed=100 + k)
        sub = "train" if k < 4 else "test"
        name = f"{sub}_{k:03d}"
        write_micrograph(root / sub / "mics" / f"{name}.mrc", img, pixel_size_a=1.0)
        Image.fromarray(mask * 255).save(root / sub / "masks" / f"{name}.png") if (root / sub / "masks").mkdir(
            parents=True, exist_ok=True) is None else None
        truth[name] = parts.assign(micrograph=f"{name}.mrc")
    return root, truth


@pytest.fixture(scope="module")
def trained(world):
    root, truth = world
    assert cli("label", "masks", "--micrographs", root / "train" / "mics", "--masks", root / "train" / "masks",
               "--out", root / "lab", "--diameter-px", D_PX, "--target-diameter-px", TARGET_D,
               "--val-fraction", 0.25) == 0
    assert cli("train", "--data", root / "lab", "--out", root / "model", "--epochs", 8, "--device", "cpu",
               "--set", "crop_size=64", "--set", "samples_per_epoch=64") == 0
    return root / "model" / "best.pt"


def test_label_records_the_scale(world, trained):
    root, _ = world
    info = json.loads((root / "lab" / "dataset.json").read_text())
    assert info["bin_factor"] == pytest.approx(4.0) and info["pixel_size_a"] == pytest.approx(4.0)
    assert info["diameter_px"] == pytest.approx(24.0) and info["diameter_a"] == pytest.approx(96.0)
    assert len(info["split"]["val"]) == 1 and len(info["split"]["train"]) == 3
    img, px = read_micrograph(root / "lab" / "micrographs" / "train_000.mrc")
    assert img.shape == (1024, 1024) and px == pytest.approx(4.0)


def test_checkpoint_carries_scale_and_threshold(trained):
    from cryoseg.train import checkpoint_info
    info = checkpoint_info(trained)
    assert info["scale"]["pixel_size_a"] == pytest.approx(4.0)
    assert info["scale"]["diameter_px"] == pytest.approx(24.0)
    assert info["picking"] is not None and 0 < info["picking"]["threshold"] < 1
    assert info["picking"]["f1"] > 0.8, info["picking"]


@pytest.fixture(scope="module")
def picked(world, trained):
    root, _ = world
    assert cli("predict", "--model", trained, "--data", root / "test" / "mics", "--out", root / "pred",
               "--device", "cpu") == 0
    assert cli("pick", "--probs", root / "pred" / "probabilities", "--out", root / "picks",
               "--formats", "star,box,csv,txt") == 0
    return root / "picks"


def test_full_size_micrographs_picked_in_their_own_frame(world, picked):
    root, truth = world
    side = json.loads((root / "pred" / "probabilities" / "test_004.json").read_text())
    assert side["bin_factor"] == pytest.approx(4.0) and side["original_shape"] == [SIZE, SIZE]
    assert read_micrograph(root / "pred" / "probabilities" / "test_004.mrc", check=False)[0].shape == (1024, 1024)
    allp = read_star(picked / "particles.star")
    assert allp.attrs["optics"]["pixel_size_a"] == pytest.approx(1.0)          # the original pixel size
    assert set(allp["micrograph"]) == {"test_004.mrc", "test_005.mrc"}
    assert allp["x"].max() > 1024 and allp["y"].max() > 1024                   # not the binned frame
    t = pd.concat([truth["test_004"], truth["test_005"]], ignore_index=True)
    m = picking_metrics(allp, t, D_PX, micrographs=["test_004.mrc", "test_005.mrc"])
    assert m["f1"] >= 0.95, m
    assert m["mean_error_px"] < 2.0, m                                         # original pixels: 0.5 binned px


@pytest.mark.parametrize("fmt", ["star", "box", "csv", "txt"])
def test_every_format_in_the_original_frame(world, picked, fmt):
    root, truth = world
    p = read_particles(picked / fmt / f"test_005.{fmt}")
    m = picking_metrics(p.assign(micrograph="m"), truth["test_005"].assign(micrograph="m"), D_PX)
    assert m["f1"] >= 0.95 and m["mean_error_px"] < 2.5, (fmt, m)              # BOX rounds corners to pixels


@pytest.mark.parametrize("fmt", ["star", "box", "csv", "txt"])
def test_labels_from_coordinates_match_labels_from_masks(world, trained, fmt):
    root, truth = world
    coords = root / f"coords-{fmt}"
    for name in ("train_000", "train_001"):
        write_particles(coords / f"{name}.{fmt}", truth[name], **(dict(box_size_px=96) if fmt == "box" else {}))
    mics = root / "two"
    mics.mkdir(exist_ok=True)
    for name in ("train_000", "train_001"):
        if not (mics / f"{name}.mrc").exists():
            (mics / f"{name}.mrc").symlink_to(root / "train" / "mics" / f"{name}.mrc")
    out = root / f"lab-{fmt}"
    assert cli("label", "coords", "--micrographs", mics, "--coordinates", coords, "--out", out,
               "--diameter-px", D_PX, "--target-diameter-px", TARGET_D) == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["bin_factor"] == pytest.approx(4.0) and info["pixel_size_a"] == pytest.approx(4.0)
    for name in ("train_000", "train_001"):
        a, b = read_mask(out / "masks" / f"{name}.mrc") > 0, read_mask(root / "lab" / "masks" / f"{name}.mrc") > 0
        assert (a & b).sum() / (a | b).sum() > 0.95, (fmt, name)


def test_flipped_y_coordinates(world, trained):
    "Topaz-style files with y from the bottom: --flip-y gives the same labels."
    root, truth = world
    t = truth["train_000"]
    flipped = t.assign(y=SIZE - 1 - t["y"])
    write_particles(root / "flip" / "train_000.star", flipped)
    mics = root / "one"
    mics.mkdir(exist_ok=True)
    (mics / "train_000.mrc").symlink_to(root / "train" / "mics" / "train_000.mrc")
    assert cli("label", "coords", "--micrographs", mics, "--coordinates", root / "flip", "--out", root / "lab-flip",
               "--diameter-px", D_PX, "--target-diameter-px", TARGET_D, "--flip-y") == 0
    a = read_mask(root / "lab-flip" / "masks" / "train_000.mrc") > 0
    b = read_mask(root / "lab" / "masks" / "train_000.mrc") > 0
    assert (a & b).sum() / (a | b).sum() > 0.95

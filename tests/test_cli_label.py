"""`cryoseg label masks | coords` (issue 14): every way users hold labels becomes a dataset folder with its
scale in dataset.json. Masks in every image format with touching discs split, coordinates in every format
(with --flip-y), binning to a target diameter that keeps pixels, labels and centres together, the split by
micrograph, resume, errors that name the file, and the real EMPIAR-10028 / CryoPPP sample."""
import json
from pathlib import Path

import numpy as np
import pytest

from cryoseg.cli.common import read_dataset_info
from cli_helpers import assert_one_line_error, run
from cryoseg.coords import read_particles, write_particles
from cryoseg.io import read_mask, read_micrograph, write_mask, write_micrograph
from cryoseg.labels import disc_labels
from cryoseg.particles import make_particles
from cryoseg.testing import soft_discs

SIZE, D = 256, 24.0
# a chain of three touching discs, a touching pair, two apart (centres in pixels of a 256² micrograph)
CENTRES = [(40, 40), (60, 43), (80, 40), (150, 150), (170, 162), (200, 60), (60, 200)]
REAL = Path(__file__).resolve().parents[1] / "data" / "empiar10028-cryoppp"


def truth(i=0, centres=CENTRES, d=D):
    "The true particles of micrograph `i`: `CENTRES` moved by 3 px per micrograph."
    xy = np.array(centres, float) + 3 * i
    return make_particles(xy[:, 0], xy[:, 1], diameter_px=d)


def micrograph(t, size=SIZE, seed=0):
    "Dark discs at the centres of `t` in noise, float32."
    sem, _ = disc_labels((size, size), t)
    return (np.random.default_rng(seed).normal(size=(size, size)) - 2 * sem).astype(np.float32)


def write_image(path, img):
    "An 8-bit PNG/JPG/TIFF of `img` (scaled to 0..255), or MRC."
    from PIL import Image
    if path.suffix == ".mrc":
        return write_micrograph(path, img, pixel_size_a=1.5)
    a = np.clip((img - img.min()) / (np.ptp(img) + 1e-9) * 255, 0, 255).astype(np.uint8)
    Image.fromarray(a).save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
    return path


def write_label_mask(path, t, size=SIZE):
    "The mask of `t`: 0/1 MRC, or anti-aliased 0..255 grey (PNG, JPG, TIFF), as exported by drawing tools."
    if path.suffix == ".mrc":
        return write_mask(path, disc_labels((size, size), t)[0])
    grey = np.round(255 * soft_discs((size, size), t[["x", "y"]].to_numpy(), D)).astype(np.uint8)
    if path.suffix == ".tif":
        import tifffile
        tifffile.imwrite(path, grey)
    else:
        from PIL import Image
        Image.fromarray(grey).save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
    return path


def matched(got, want, tol=1.0) -> int:
    "How many of the centres `want` have one of `got` within `tol` px."
    g, w = got[["x", "y"]].to_numpy(), want[["x", "y"]].to_numpy()
    return int(sum(np.hypot(*(g - p).T).min() <= tol for p in w)) if len(g) else 0


# --- label masks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["png", "jpg", "tif", "mrc"])
def test_masks_every_format_splits_touching_discs(capsys, tmp_path, fmt):
    "Micrographs and masks of one format; touching discs are split back into the particles that were drawn."
    (tmp_path / "mics").mkdir(); (tmp_path / "masks").mkdir()
    for i in range(2):
        t = truth(i)
        write_image(tmp_path / "mics" / f"mic{i}.{fmt}", micrograph(t, seed=i))
        write_label_mask(tmp_path / "masks" / (f"mic{i}.{fmt}" if i == 0 else f"mic{i}_mask.{fmt}"), t)
    rc, _, err = run(capsys, "label", "masks", "--micrographs", tmp_path / "mics", "--masks", tmp_path / "masks",
                     "--out", tmp_path / "lab", "--diameter-px", D, "--pixel-size", 1.5, "--quiet")
    assert rc == 0, err
    for i in range(2):
        got = read_particles(tmp_path / "lab" / "coordinates" / f"mic{i}.star")
        assert len(got) == len(CENTRES), (fmt, i, got[["x", "y"]])
        assert matched(got, truth(i)) == len(CENTRES), got[["x", "y"]]
        inst = read_mask(tmp_path / "lab" / "instances" / f"mic{i}.mrc", instance=True)
        assert inst.max() == len(CENTRES)
        img, px = read_micrograph(tmp_path / "lab" / "micrographs" / f"mic{i}.mrc")
        assert img.shape == (SIZE, SIZE) and px == 1.5
    info = read_dataset_info(tmp_path / "lab")
    assert (info["pixel_size_a"], info["bin_factor"], info["diameter_px"], info["diameter_a"]) == (1.5, 1.0, D, 1.5 * D)
    assert info["micrographs"]["mic1"] == dict(source=str((tmp_path / "mics" / f"mic1.{fmt}").resolve()),
                                               original_shape=[SIZE, SIZE], shape=[SIZE, SIZE])
    assert "split" not in info


def test_masks_instance_map_is_kept(capsys, tmp_path):
    "A 16-bit PNG instance map keeps its ids; no diameter is needed to tell touching particles apart."
    from PIL import Image
    t = truth()
    write_micrograph(tmp_path / "mics" / "a.mrc", micrograph(t), pixel_size_a=2.0)
    inst = disc_labels((SIZE, SIZE), t)[1]
    (tmp_path / "masks").mkdir()
    Image.fromarray(inst.astype(np.uint16)).save(tmp_path / "masks" / "a.png")
    rc, _, err = run(capsys, "label", "masks", "--micrographs", tmp_path / "mics", "--masks", tmp_path / "masks",
                     "--out", tmp_path / "lab", "--quiet")
    assert rc == 0, err
    assert np.array_equal(read_mask(tmp_path / "lab" / "instances" / "a.mrc", instance=True), inst)
    assert len(read_particles(tmp_path / "lab" / "coordinates" / "a.star")) == len(CENTRES)
    assert "note: no particle diameter" not in err


# --- label coords ------------------------------------------------------------------------------------

def _cryosparc_star(path, tables):
    "A cryoSPARC-style particle STAR export: one file, micrograph names with a 21-digit UID prefix."
    rows = [f"{k:06d}@J9/extract/p.mrcs J9/motioncorrected/{10**20 + i:021d}_{n}.mrc {x:.2f} {y:.2f}"
            for i, (n, t) in enumerate(tables.items()) for k, (x, y) in enumerate(t[["x", "y"]].to_numpy(), 1)]
    path.write_text("\ndata_\n\nloop_\n_rlnImageName #1\n_rlnMicrographName #2\n_rlnCoordinateX #3\n"
                    "_rlnCoordinateY #4\n" + "\n".join(rows) + "\n")
    return path


def _coordinates(root, kind, tables):
    "Write the true centres of every micrograph as `kind` (a folder of per-micrograph files, or one file)."
    import pandas as pd
    d = root / "picks"
    d.mkdir()
    if kind == "relion-star":
        for n, t in tables.items():
            write_particles(d / f"{n}_autopick.star", t.drop(columns="diameter_px"))
    elif kind == "cryosparc-star":
        return _cryosparc_star(d / "particles_exported.star", tables)
    elif kind in ("box", "box-flipped"):
        for n, t in tables.items():
            t = t.assign(y=SIZE - 1 - t["y"]) if kind == "box-flipped" else t
            write_particles(d / f"{n}.box", t, box_size_px=D)
    elif kind == "cryoppp-csv":
        for n, t in tables.items():
            write_particles(d / f"{n}.csv", t)
    elif kind == "topaz-txt":
        allt = pd.concat([t.assign(micrograph=n) for n, t in tables.items()], ignore_index=True)
        return write_particles(d / "picks.txt", allt)
    return d


@pytest.mark.parametrize("kind", ["relion-star", "cryosparc-star", "box", "box-flipped", "cryoppp-csv", "topaz-txt"])
def test_coords_every_format(capsys, tmp_path, kind):
    "Coordinates of every format (per micrograph or one file for all) give the discs at the true centres."
    tables = {f"mic{i}": truth(i) for i in range(2)}
    for i, (n, t) in enumerate(tables.items()):
        write_micrograph(tmp_path / "mics" / f"{n}.mrc", micrograph(t, seed=i), pixel_size_a=1.5)
    coords = _coordinates(tmp_path, kind, tables)
    flip = ["--flip-y"] if kind == "box-flipped" else []
    rc, _, err = run(capsys, "label", "coords", "--micrographs", tmp_path / "mics", "--coordinates", coords,
                     "--out", tmp_path / "lab", "--diameter-a", 1.5 * D, *flip, "--quiet")
    assert rc == 0, err
    for n, t in tables.items():
        assert np.array_equal(read_mask(tmp_path / "lab" / "masks" / f"{n}.mrc"), disc_labels((SIZE, SIZE), t)[0]), n
        got = read_particles(tmp_path / "lab" / "coordinates" / f"{n}.star")
        assert len(got) == len(t) and matched(got, t, tol=0.01) == len(t)
    info = read_dataset_info(tmp_path / "lab")
    assert (info["diameter_px"], info["diameter_a"], info["label"], info["flip_y"]) == (D, 1.5 * D, "disc", bool(flip))


def test_coords_diameter_from_the_files(capsys, tmp_path):
    "CryoPPP's CSV carries the diameter: no --diameter-px needed, and dataset.json records it."
    t = truth()
    write_micrograph(tmp_path / "mics" / "a.mrc", micrograph(t), pixel_size_a=1.5)
    (tmp_path / "picks").mkdir()
    write_particles(tmp_path / "picks" / "a.csv", t)
    rc, _, err = run(capsys, "label", "coords", "--micrographs", tmp_path / "mics", "--coordinates", tmp_path / "picks",
                     "--out", tmp_path / "lab", "--quiet")
    assert rc == 0, err
    assert read_dataset_info(tmp_path / "lab")["diameter_px"] == D


# --- scale: --target-diameter-px, --bin ---------------------------------------------------------------

@pytest.mark.parametrize("target, factor", [(8, 4.0), (10, 3.2)])
def test_target_diameter_bins_pixels_labels_and_centres_together(capsys, tmp_path, target, factor):
    "A disc at a known centre lands at centre / f, with pixel size and diameter scaled by the same f."
    t = truth(centres=[(64, 64), (192, 128), (100, 200)], d=32)
    write_micrograph(tmp_path / "mics" / "a.mrc", micrograph(t), pixel_size_a=1.0)
    write_particles(tmp_path / "a.star", t.drop(columns="diameter_px"))
    write_mask(tmp_path / "masks" / "a.mrc", disc_labels((SIZE, SIZE), t)[0])
    for method, labels in (("coords", ["--coordinates", tmp_path / "a.star"]), ("masks", ["--masks", tmp_path / "masks"])):
        out = tmp_path / f"out-{method}"
        rc, _, err = run(capsys, "label", method, "--micrographs", tmp_path / "mics", *labels, "--out", out,
                         "--diameter-a", 32, "--target-diameter-px", target, "--quiet")
        assert rc == 0, err
        info = read_dataset_info(out)
        assert info["bin_factor"] == pytest.approx(factor) and info["pixel_size_a"] == pytest.approx(factor)
        assert info["diameter_px"] == pytest.approx(target) and info["diameter_a"] == 32
        n = round(SIZE / factor)
        img, px = read_micrograph(out / "micrographs" / "a.mrc")
        assert img.shape == (n, n) and px == pytest.approx(factor, rel=1e-4), (img.shape, px)
        assert info["micrographs"]["a"]["original_shape"] == [SIZE, SIZE] and info["micrographs"]["a"]["shape"] == [n, n]
        got = read_particles(out / "coordinates" / "a.star").sort_values("x")
        want = t.sort_values("x")
        tol = 0.01 if method == "coords" else 0.5 / factor
        assert np.allclose(got["x"].to_numpy(), want["x"].to_numpy() / factor, atol=tol), (method, got[["x", "y"]])
        assert np.allclose(got["y"].to_numpy(), want["y"].to_numpy() / factor, atol=tol)
        mask = read_mask(out / "masks" / "a.mrc")
        for x, y in want[["x", "y"]].to_numpy() / factor:
            assert mask[round(y), round(x)] == 1
        expected = disc_labels((n, n), make_particles(want["x"] / factor, want["y"] / factor), diameter_px=target)[0]
        assert (mask != expected).mean() < 0.02, (method, (mask != expected).mean())


def test_bin_without_a_diameter(capsys, tmp_path):
    "--bin F is the explicit alternative: no diameter needed for masks (regions), pixel size from the header."
    t = truth()
    write_micrograph(tmp_path / "mics" / "a.mrc", micrograph(t), pixel_size_a=1.5)
    write_mask(tmp_path / "masks" / "a.mrc", disc_labels((SIZE, SIZE), t)[0])
    rc, _, err = run(capsys, "label", "masks", "--micrographs", tmp_path / "mics", "--masks", tmp_path / "masks",
                     "--out", tmp_path / "lab", "--bin", 2, "--quiet")
    assert rc == 0, err
    assert "note: no particle diameter" in err
    info = read_dataset_info(tmp_path / "lab")
    assert (info["bin_factor"], info["pixel_size_a"], info["diameter_px"]) == (2.0, 3.0, None)
    assert len(read_particles(tmp_path / "lab" / "coordinates" / "a.star")) == 4      # 3 + 2 touching, 2 apart


# --- split, resume -----------------------------------------------------------------------------------

def _small_set(root, n, size=64):
    for i in range(n):
        t = truth(i, centres=[(20, 20), (44, 40)], d=12)
        write_micrograph(root / "mics" / f"m{i}.mrc", micrograph(t, size=size, seed=i), pixel_size_a=2.0)
        write_mask(root / "masks" / f"m{i}.mrc", disc_labels((size, size), t)[0])


def test_val_fraction_splits_by_micrograph(capsys, tmp_path):
    _small_set(tmp_path, 5)
    splits = []
    for out, seed in (("a", 0), ("b", 0), ("c", 7)):
        rc, _, err = run(capsys, "label", "masks", "--micrographs", tmp_path / "mics", "--masks", tmp_path / "masks",
                         "--out", tmp_path / out, "--diameter-px", 12, "--val-fraction", 0.4, "--seed", seed, "--quiet")
        assert rc == 0, err
        splits.append(read_dataset_info(tmp_path / out)["split"])
    a, b, _ = splits
    assert a == b and len(a["val"]) == 2 and len(a["train"]) == 3
    assert sorted(a["train"] + a["val"]) == [f"m{i}" for i in range(5)]
    rc, _, err = run(capsys, "label", "masks", "--micrographs", tmp_path / "mics", "--masks", tmp_path / "masks",
                     "--out", tmp_path / "d", "--diameter-px", 12, "--val-fraction", 0.01, "--quiet")
    assert rc == 0 and len(read_dataset_info(tmp_path / "d")["split"]["val"]) == 1       # at least one


def test_resumed_run_covers_every_micrograph(capsys, tmp_path):
    """A micrograph without its mask fails, naming it; once the mask is there a rerun does only it, and dataset.json
    lists both micrographs, the one of the earlier run too."""
    _small_set(tmp_path, 2)
    (tmp_path / "masks" / "m1.mrc").rename(tmp_path / "m1_mask.mrc")
    args = ["label", "masks", "--micrographs", tmp_path / "mics", "--masks", tmp_path / "masks", "--out", tmp_path / "lab",
            "--diameter-px", 12, "--val-fraction", 0.5, "--quiet"]
    rc, _, err = run(capsys, *args)
    assert rc == 1
    assert f"{tmp_path / 'mics' / 'm1.mrc'}: no mask file named m1.* (or m1_mask.*, ...) in {tmp_path / 'masks'}" in err
    info = read_dataset_info(tmp_path / "lab")
    assert list(info["micrographs"]) == ["m0"] and sorted(info["split"]["train"] + info["split"]["val"]) == ["m0"]
    (tmp_path / "m1_mask.mrc").rename(tmp_path / "masks" / "m1_mask.mrc")
    before = (tmp_path / "lab" / "masks" / "m0.mrc").stat().st_mtime_ns
    rc, _, err = run(capsys, *args[:-1])
    assert rc == 0 and "1 input(s) already done" in err, err
    assert (tmp_path / "lab" / "masks" / "m0.mrc").stat().st_mtime_ns == before               # kept, not redone
    info = read_dataset_info(tmp_path / "lab")
    assert list(info["micrographs"]) == ["m0", "m1"] and len(info["split"]["val"]) == 1
    assert json.loads((tmp_path / "lab" / "cryoseg-label-masks.json").read_text())["status"] == "complete"
    rc, _, err = run(capsys, *args[:-3], "--diameter-px", 13, "--quiet")                      # other settings
    assert_one_line_error(rc, err, "other settings", "--force")


# --- errors ------------------------------------------------------------------------------------------

def test_coordinates_at_the_wrong_scale_are_refused(capsys, tmp_path):
    "Picks at 4x the micrograph's scale (made on the unbinned original) stop that micrograph, naming the file."
    t = truth()
    write_micrograph(tmp_path / "mics" / "a.mrc", micrograph(t), pixel_size_a=1.5)
    star = write_particles(tmp_path / "picks" / "a.star", t.assign(x=4 * t["x"], y=4 * t["y"]))
    rc, _, err = run(capsys, "label", "coords", "--micrographs", tmp_path / "mics", "--coordinates", tmp_path / "picks",
                     "--out", tmp_path / "lab", "--diameter-px", D, "--quiet")
    assert rc == 1
    assert f"{star}: " in err and "particle centres" in err and "lie outside the 256x256 image" in err, err
    assert not (tmp_path / "lab" / "masks" / "a.mrc").exists()


CASES = {"diameter-a-without-pixel-size": (["--micrographs", "png", "--diameter-a", 300],
                                          ["--diameter-a needs the pixel size", "--pixel-size"]),
         "target-larger": (["--micrographs", "png", "--diameter-px", D, "--target-diameter-px", 30],
                           ["--target-diameter-px 30 is larger than the particles (24 px)"]),
         "mixed-pixel-sizes": (["--micrographs", "mrc", "--diameter-px", D], ["a.mrc: 1.5 Å/px, but", "b.mrc: 3 Å/px"]),
         "out-is-input": (["--micrographs", "png", "--out", "masks"], ["is the input"]),
         "no-diameter-in-files": (["--micrographs", "png", "--coordinates", "picks"],
                                  ["give no particle diameter; give --diameter-px or --diameter-a"])}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_errors(capsys, tmp_path, case):
    "Options that cannot work stop the run before it writes anything, in one line that says what to give."
    t = truth()
    (tmp_path / "png").mkdir(); (tmp_path / "masks").mkdir()
    write_image(tmp_path / "png" / "a.png", micrograph(t))
    write_micrograph(tmp_path / "mrc" / "a.mrc", micrograph(t), pixel_size_a=1.5)
    write_micrograph(tmp_path / "mrc" / "b.mrc", micrograph(t), pixel_size_a=3.0)
    write_label_mask(tmp_path / "masks" / "a.png", t)
    write_particles(tmp_path / "picks" / "a.star", t.drop(columns="diameter_px"))
    opts, want = CASES[case]
    method = "coords" if "--coordinates" in opts else "masks"
    base = ["--out", tmp_path / "lab"] + ([] if method == "coords" else ["--masks", tmp_path / "masks"])
    argv = ["label", method, *base, *[tmp_path / o if o in ("png", "mrc", "masks", "picks") else o for o in opts]]
    rc, _, err = run(capsys, *argv, "--quiet")
    assert_one_line_error(rc, err, *want)
    assert not (tmp_path / "lab").exists()


def test_one_diameter_only(capsys, tmp_path):
    rc, _, err = run(capsys, "label", "masks", "--micrographs", tmp_path, "--masks", tmp_path, "--out", tmp_path / "o",
                     "--diameter-px", 20, "--diameter-a", 100)
    assert rc == 2 and "argument --diameter-a: not allowed with argument --diameter-px" in err


def test_help_documents_resume(capsys):
    for method in ("masks", "coords"):
        rc, out, _ = run(capsys, "label", method, "--help")
        flat = " ".join(out.split())
        assert rc == 0 and "failures.tsv" in flat and "(default: resume)" in flat and "--target-diameter-px" in flat


# --- the real sample ---------------------------------------------------------------------------------

@pytest.mark.skipif(not (REAL / "train" / "labels").is_dir(), reason="the real sample is not in this checkout")
def test_real_sample_masks_recover_the_particles(capsys, tmp_path):
    """EMPIAR-10028 with CryoPPP's anti-aliased PNG disc masks (56 px at 5.36 Å/px): the discs come back as particles,
    as many as the labelled area holds (the sample's PROVENANCE.md: within 2 %)."""
    rc, _, err = run(capsys, "label", "masks", "--micrographs", REAL / "train" / "images", "--masks",
                     REAL / "train" / "labels", "--out", tmp_path / "lab", "--diameter-px", 56, "--pixel-size", 5.36,
                     "--quiet")
    assert rc == 0, err
    info = read_dataset_info(tmp_path / "lab")
    assert (info["pixel_size_a"], info["diameter_px"], info["bin_factor"]) == (5.36, 56.0, 1.0)
    assert info["diameter_a"] == pytest.approx(300.16) and len(info["micrographs"]) == 4
    for name in info["micrographs"]:
        got = read_particles(tmp_path / "lab" / "coordinates" / f"{name}.star")
        area = read_mask(tmp_path / "lab" / "masks" / f"{name}.mrc").sum() / (np.pi * 28 ** 2)
        assert abs(len(got) - area) <= 0.03 * area + 1, (name, len(got), area)
        assert len(got) > 30
        img, px = read_micrograph(tmp_path / "lab" / "micrographs" / f"{name}.mrc")
        assert img.shape == (1024, 1024) and px == 5.36

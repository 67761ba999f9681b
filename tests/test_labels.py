"Tests for cryoseg.labels: label invariants, bad input, CryoPPP layout and download (local server only)."
import io as _io
import math
import tarfile
import warnings

import numpy as np
import pandas as pd
import pytest

from cryoseg.labels import disc_labels, downsample, scale_particles, seed_recipe_labels, _safe_extract


# ---- disc labels -------------------------------------------------------------------------------
@pytest.mark.parametrize("radius", [2.5, 6.0, 10.3, 31.0])
def test_disc_area(radius):
    sem, inst = disc_labels((100, 100), [[49.6, 50.2]], diameter_px=2 * radius)
    assert abs(int(sem.sum()) - math.pi * radius**2) <= math.pi * radius  # lattice-point error < perimeter/2


def test_disc_overlap_one_id_per_particle():
    rng = np.random.default_rng(0)
    xy = rng.uniform(10, 118, size=(30, 2))
    sem, inst = disc_labels((128, 128), xy, diameter_px=16)
    ids = np.unique(inst[inst > 0])
    assert set(ids) <= set(range(1, 31))
    # nearest centre wins: every labelled pixel's id is its nearest centre among the discs covering it
    rr, cc = np.nonzero(inst)
    d2 = (cc[:, None] - xy[None, :, 0]) ** 2 + (rr[:, None] - xy[None, :, 1]) ** 2
    assert (np.argmin(d2, axis=1) + 1 == inst[rr, cc]).all()
    assert ((inst > 0) == (sem == 1)).all()


def test_disc_diameter_in_angstrom_equals_px():
    a = disc_labels((64, 64), [[30, 30]], diameter_a=40.0, pixel_size_a=2.0)[0]
    b = disc_labels((64, 64), [[30, 30]], diameter_px=20.0)[0]
    assert (a == b).all()


def test_disc_bad_input():
    with pytest.raises(ValueError, match="no particle diameter"):
        disc_labels((32, 32), [[1, 1]])
    with pytest.raises(ValueError, match="pixel_size_a"):
        disc_labels((32, 32), [[1, 1]], diameter_a=10)
    with pytest.raises(ValueError, match="not both"):
        disc_labels((32, 32), [[1, 1]], diameter_a=10, diameter_px=3, pixel_size_a=1)
    with pytest.warns(UserWarning, match="1 of 2"):
        disc_labels((32, 32), [[1, 1], [40, 3]], diameter_px=4)


# ---- downsampling ------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [2, 3, 4, 2.5])
def test_downsample_keeps_area_and_mean(factor):
    rng = np.random.default_rng(1)
    img = rng.normal(2.0, 1.0, size=(120, 90)).astype(np.float32)
    parts = pd.DataFrame({"x": rng.uniform(15, 75, 6), "y": rng.uniform(15, 105, 6), "diameter_px": 20.0})
    sem, inst = disc_labels(img.shape, parts)
    small, m, px = downsample(img, sem, factor=factor, pixel_size_a=1.0)
    assert small.shape == m.shape
    assert abs(px - factor) < 0.05 * factor
    assert abs(small.mean() - img.mean()) < 1e-3
    assert abs(int(m.sum()) * (img.size / m.size) - int(sem.sum())) < 0.1 * int(sem.sum())
    _, i2, _ = downsample(None, inst, factor=factor)
    assert i2.dtype == np.int32 and ((i2 > 0) == (m > 0)).all()


def test_scale_particles_bin_grid():
    # a 4x4 block average of a single bright pixel at the block centre lands on the scaled coordinate
    img = np.zeros((16, 16), np.float32)
    img[4:8, 8:12] = 1
    small, _, _ = downsample(img, factor=4, method="bin")
    p = scale_particles(pd.DataFrame({"x": [9.5], "y": [5.5]}), (16, 16), small.shape, "bin")
    assert small[int(p.y[0]), int(p.x[0])] == 1 and (p.x[0], p.y[0]) == (2.0, 1.0)


# ---- seed recipe -------------------------------------------------------------------------------
def test_seed_recipe_threshold_is_relative():
    yy, xx = np.mgrid[:64, :64]
    img = 7.0 - 0.01 * (np.hypot(xx - 30, yy - 33) < 8)
    a = seed_recipe_labels(img, diameter_px=16)[0]
    b = seed_recipe_labels(img * 1e4, diameter_px=16)[0]
    assert (a == b).all() and 150 < a.sum() < 250


# ---- safe extraction ---------------------------------------------------------------------------
def _tar_with(path, names):
    with tarfile.open(path, "w:gz") as tf:
        for n in names:
            data = b"x"
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            tf.addfile(ti, _io.BytesIO(data))


def test_safe_extract_refuses_traversal(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    _tar_with(bad, ["10017/micrographs/a.mrc", "../evil.txt"])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ValueError, match="unsafe"):
        _safe_extract(bad, dest)
    assert not (tmp_path / "evil.txt").exists() and not any(dest.rglob("*"))
    absolute = tmp_path / "abs.tar.gz"
    _tar_with(absolute, ["/tmp/evil_abs.txt"])
    with pytest.raises(ValueError, match="unsafe"):
        _safe_extract(absolute, dest)


def test_safe_extract_not_a_tar(tmp_path):
    p = tmp_path / "x.tar.gz"
    p.write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="not a readable tar"):
        _safe_extract(p, tmp_path)

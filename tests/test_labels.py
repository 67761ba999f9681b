"""Tests for cryoseg.labels, cryoseg.preprocess (downsampling) and cryoseg.datasets (the shipped real sample, CryoPPP
layout and download, local server only): label invariants, instances from disc masks, coordinates at the wrong scale,
bad input, hypothesis properties."""
import io as _io
import math
import tarfile

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from cryoseg.coords import read_particles, write_particles
from cryoseg.datasets import (REAL_SAMPLE_DIAMETER_PX, REAL_SAMPLE_PIXEL_SIZE_A, _safe_extract, download_cryoppp,
                              load_cryoppp, load_real_sample, make_cryoppp_sample, real_sample_folder)
from cryoseg.io import read_mask, read_micrograph
from cryoseg.labels import (disc_labels, footprint_labels, instances_from_disc_mask, reprojection_labels,
                            seed_recipe_labels)
from cryoseg.particles import scale_particles
from cryoseg.preprocess import downsample
from cryoseg.simulate import SimConfig, simulate_dataset
from cryoseg.testing import serve_folder
from cryoseg.volumes import make_volume


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


# ---- labels from projections vs the simulator ---------------------------------------------------
def _iou(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    cfg = SimConfig(n_particles=12, min_distance_px=20)   # closer than a diameter: some footprints overlap
    root = simulate_dataset(tmp_path_factory.mktemp("sim") / "ds", n_micrographs=2, cfg=cfg, seed=3, progress=False)
    vol = make_volume(cfg.volume_kind, cfg.box_size, cfg.pixel_size_a, cfg.diameter_a, cfg.volume_seed)
    return root, cfg, vol


def test_footprint_and_reprojection_match_simulated_dataset(dataset):
    root, cfg, vol = dataset
    mask3d = (vol > 0.3 * vol.max()).astype(np.float32)
    for name in ("mic_0000", "mic_0001"):
        img, px = read_micrograph(root / "micrographs" / f"{name}.mrc")
        star = root / "coordinates" / f"{name}.star"
        truth_sem = read_mask(root / "masks" / f"{name}.mrc")
        truth_inst = read_mask(root / "instances" / f"{name}.mrc", instance=True)
        parts = read_particles(star)
        sem, inst = footprint_labels(vol, parts, img.shape)
        assert (sem == truth_sem).all() and (inst == truth_inst).all()
        # reprojection of the density map from the STAR path with the footprint rule: exact as well
        sem2, inst2 = reprojection_labels(vol, star, img.shape, pixel_size_a=px, threshold_frac=0.1)
        assert (inst2 == truth_inst).all()
        # a binary refinement-style mask: IoU >= 0.95
        sem3, _ = reprojection_labels(mask3d, star, img.shape, pixel_size_a=px)
        assert _iou(sem3, truth_sem) >= 0.95


def test_reprojection_origin_convention_and_map_file(dataset, tmp_path):
    import mrcfile
    root, cfg, vol = dataset
    parts = read_particles(root / "coordinates" / "mic_0000.star")
    truth = read_mask(root / "instances" / "mic_0000.mrc", instance=True)
    px = cfg.pixel_size_a
    shift = np.random.default_rng(0).integers(-5, 6, size=(len(parts), 2)).astype(float)
    moved = parts.assign(x=parts.x + shift[:, 0], y=parts.y + shift[:, 1],
                         origin_x_a=shift[:, 0] * px, origin_y_a=shift[:, 1] * px)
    star = write_particles(tmp_path / "refined.star", moved)
    # the map as an MRC file (read with cryoseg.volumes.read_volume)
    with mrcfile.new(tmp_path / "map.mrc") as m:
        m.set_data(np.ascontiguousarray(vol))
        m.voxel_size = px
    _, inst = reprojection_labels(tmp_path / "map.mrc", star, truth.shape, pixel_size_a=px, threshold_frac=0.1)
    assert (inst == truth).all()


def test_reprojection_bad_input(dataset, tmp_path):
    root, cfg, vol = dataset
    parts = read_particles(root / "coordinates" / "mic_0000.star")
    picks = write_particles(tmp_path / "picks.star", parts[["micrograph", "x", "y"]])
    with pytest.raises(ValueError, match="no particle poses"):
        reprojection_labels(vol, picks, (256, 256), pixel_size_a=4.0)
    both = pd.concat([parts, parts.assign(micrograph="other.mrc")], ignore_index=True)
    with pytest.raises(ValueError, match="pass micrograph="):
        reprojection_labels(vol, both, (256, 256), pixel_size_a=4.0)
    with pytest.raises(ValueError, match="no particles on micrograph"):
        reprojection_labels(vol, both, (256, 256), pixel_size_a=4.0, micrograph="nope.mrc")
    a = reprojection_labels(vol, both, (256, 256), pixel_size_a=4.0, micrograph="mic_0000", threshold_frac=0.1)[1]
    assert (a == read_mask(root / "instances" / "mic_0000.mrc", instance=True)).all()


# ---- CryoPPP ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return make_cryoppp_sample(tmp_path_factory.mktemp("cppp") / "99999", n_micrographs=2, seed=1)


def test_cryoppp_csv_and_flipped_star(sample):
    recs = load_cryoppp(sample)
    assert len(recs) == 2 and not recs.unlabelled and not recs.orphans
    img, _ = read_micrograph(recs[0].micrograph)
    H = img.shape[0]
    truth = read_particles(sample / "truth" / "coordinates" / f"{recs[0].name}.star")
    np.testing.assert_allclose(recs[0].particles[["x", "y"]], truth[["x", "y"]])
    raw = read_particles(recs.star_path)
    flipped = read_particles(recs.star_path, flip_y=True, image_height=H)
    on0 = lambda t: t[t.micrograph.str.startswith(recs[0].name)][["x", "y"]].to_numpy()
    np.testing.assert_allclose(on0(flipped), truth[["x", "y"]].to_numpy())
    assert np.abs(on0(raw)[:, 1] - truth.y.to_numpy()).max() > 5
    # discs from the CSV cover every exact footprint pixel
    sem, _ = disc_labels(img.shape, recs[0].particles)
    exact = read_mask(sample / "truth" / "masks" / f"{recs[0].name}.mrc")
    assert (sem[exact > 0] == 1).mean() > 0.99


def test_cryoppp_missing_coordinates_reported(sample, tmp_path):
    import shutil
    b = tmp_path / "b"
    shutil.copytree(sample, b)
    (b / "ground_truth" / "particle_coordinates" / "sample_0000.csv").unlink()
    with pytest.warns(UserWarning, match="without a coordinate file"):
        recs = load_cryoppp(b)
    assert [r.name for r in recs] == ["sample_0001"] and [p.name for p in recs.unlabelled] == ["sample_0000.mrc"]
    # a coordinate file that lists no particles is a micrograph without particles (kept, empty labels)
    (b / "ground_truth" / "particle_coordinates" / "sample_0001.csv").write_text("X-Coordinate,Y-Coordinate,Diameter\n")
    with pytest.warns(UserWarning):
        recs = load_cryoppp(b)
    assert len(recs) == 1 and len(recs[0].particles) == 0
    assert disc_labels((256, 256), recs[0].particles, diameter_px=30)[0].sum() == 0
    shutil.rmtree(b / "ground_truth" / "particle_coordinates")
    with pytest.raises(FileNotFoundError, match="particle_coordinates"):
        load_cryoppp(b)


def test_download_cryoppp_roundtrip_after_interruption(sample, tmp_path):
    served = tmp_path / "srv"
    served.mkdir()
    with tarfile.open(served / "99999.tar.gz", "w:gz") as tf:
        tf.add(sample, arcname="99999")
    size = (served / "99999.tar.gz").stat().st_size
    cache = tmp_path / "cache"
    (cache / "cryoppp").mkdir(parents=True)
    # an interrupted earlier download left half a file behind: it is neither taken for the archive nor in the way
    # (cryoseg.fetch.download goes through pooch, which does not resume: the archive is downloaded again, whole)
    (cache / "cryoppp" / "99999.tar.gz.part").write_bytes((served / "99999.tar.gz").read_bytes()[: size // 2])
    with serve_folder(served) as url:
        root = download_cryoppp(99999, cache_dir=cache, base_url=url, expected_size=size, progress=False, keep_archive=True)
    assert (cache / "cryoppp" / "99999.tar.gz").stat().st_size == size
    assert (cache / "cryoppp" / "99999.tar.gz").read_bytes() == (served / "99999.tar.gz").read_bytes()
    assert len(load_cryoppp(root)) == 2
    # lite data go to their own folder
    with serve_folder(served) as url:
        lite_root = download_cryoppp(99999, cache_dir=cache, base_url=url, lite=True, progress=False)
    assert lite_root.parent.name == "cryoppp_lite"


def test_download_cryoppp_offline(tmp_path):
    with pytest.raises(ConnectionError, match="CryoPPP 10017"):
        download_cryoppp(10017, cache_dir=tmp_path, base_url="http://127.0.0.1:9/", progress=False)


def test_download_cryoppp_split_dataset(sample, tmp_path):
    # some CryoPPP entries (e.g. 10389) hold two data sets, <id>/<id>A/ and <id>/<id>B/
    served = tmp_path / "srv"
    served.mkdir()
    with tarfile.open(served / "10389.tar.gz", "w:gz") as tf:
        tf.add(sample, arcname="10389/10389A")
        tf.add(sample, arcname="10389/10389B")
    with serve_folder(served) as url:
        with pytest.warns(UserWarning, match="several candidates"):
            got = download_cryoppp(10389, cache_dir=tmp_path / "c", base_url=url, progress=False)
    assert got.name == "10389" and len(load_cryoppp(got / "10389B")) == 2


# ---- properties ---------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 47), st.floats(0, 39), st.floats(1, 20)), min_size=0, max_size=12))
def test_disc_labels_union_and_nearest(discs):
    xy = np.array([d[:2] for d in discs], float).reshape(-1, 2)
    diam = np.array([d[2] for d in discs], float)
    sem, inst = disc_labels((40, 48), xy, diameter_px=diam if len(diam) else 1.0)
    yy, xx = np.mgrid[:40, :48]
    d2 = (xx[..., None] - xy[:, 0]) ** 2 + (yy[..., None] - xy[:, 1]) ** 2     # (H, W, n)
    inside = d2 <= (diam / 2) ** 2
    assert (sem.astype(bool) == inside.any(-1)).all()                        # semantic = union of discs
    if len(xy):
        d2m = np.where(inside, d2, np.inf)
        lab = inst[sem > 0]
        assert (d2m[sem > 0, lab - 1] == d2m[sem > 0].min(-1)).all()        # nearest covering centre


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([2, 3, 4, 2.5, 3.3]), st.sampled_from(["fourier", "bin"]))
def test_downsample_mask_area_majority(seed, factor, method):
    if method == "bin" and factor != int(factor):
        return
    rng = np.random.default_rng(seed)
    mask = (rng.random((60, 50)) < rng.uniform(0.05, 0.95)).astype(np.uint8)
    _, m, _ = downsample(None, mask, factor=factor, method=method)
    inst = np.where(mask > 0, 1 + (np.arange(mask.size).reshape(mask.shape) % 7), 0).astype(np.int32)
    _, i, _ = downsample(None, inst, factor=factor, method=method)
    assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    assert ((i > 0) == (m > 0)).all()
    if method == "bin":   # exact block means: compare with a direct computation
        k = int(factor)
        h, w = m.shape
        frac = mask[:h * k, :w * k].reshape(h, k, w, k).mean(axis=(1, 3))
        assert (m == (frac >= 0.5)).all()


# ---- coordinates at the wrong scale (issue 14, item 6) -----------------------------------------
def _picks_x4(tmp_path, n=20, size=256, seed=0):
    "A STAR file of picks on a 256² micrograph written at 4× the scale (as for the unbinned micrograph)."
    rng = np.random.default_rng(seed)
    xy = rng.uniform(10, size - 10, size=(n, 2))
    from cryoseg.particles import make_particles
    t = make_particles(4 * xy[:, 0], 4 * xy[:, 1], micrograph="mic_0000.mrc", diameter_px=20.0)
    return xy, write_particles(tmp_path / "picks_x4.star", t)


def test_disc_labels_refuse_coordinates_at_the_wrong_scale(tmp_path):
    xy, star = _picks_x4(tmp_path)
    parts = read_particles(star)
    for outside in ("drop", "clip", "keep"):
        with pytest.raises(ValueError, match=r"picks_x4\.star.*outside.*(scale|flip)"):
            disc_labels((256, 256), parts, outside=outside, path=star)
    # without a path, the message names the micrograph of the table
    with pytest.raises(ValueError, match=r"mic_0000\.mrc.*scale"):
        disc_labels((256, 256), parts)
    # the same picks at the right scale make full labels; a few centres outside are still dropped with a warning
    sem, inst = disc_labels((256, 256), xy, diameter_px=20.0)
    assert len(np.unique(inst)) - 1 == len(xy)
    with pytest.warns(UserWarning, match="2 of 20"):
        disc_labels((256, 256), np.r_[xy[:18], [[300.0, 5.0], [-4.0, 9.0]]], diameter_px=20.0)
    # the threshold is a parameter (1 switches the check off)
    sem, _ = disc_labels((256, 256), parts, outside="keep", max_outside_frac=1.0)
    assert sem.sum() < 0.25 * np.pi * 10**2 * len(xy)          # what it used to make: labels mostly empty


def test_projection_labels_refuse_coordinates_at_the_wrong_scale(dataset, tmp_path):
    root, cfg, vol = dataset
    star = root / "coordinates" / "mic_0000.star"
    parts = read_particles(star)
    big = parts.assign(x=parts.x * 4, y=parts.y * 4)
    big_star = write_particles(tmp_path / "refined_x4.star", big)
    with pytest.raises(ValueError, match=r"refined_x4\.star.*outside.*scale"):
        reprojection_labels(vol, big_star, (256, 256), pixel_size_a=cfg.pixel_size_a)
    with pytest.raises(ValueError, match=r"mic_0000.*outside.*scale"):
        footprint_labels(vol, big, (256, 256))
    # the right scale still labels every particle
    _, inst = footprint_labels(vol, parts, (256, 256))
    assert set(np.unique(inst)) - {0} == set(parts.particle_id)


# ---- instances from disc masks ---------------------------------------------------------------------
def _touching_discs(rng, n, d, size=160, min_sep=0.6, max_sep=1.0):
    "n centres in a chain/cluster, neighbours min_sep..max_sep diameters apart (touching or overlapping), inside."
    pts = [rng.uniform(size / 2 - 10, size / 2 + 10, 2)]
    while len(pts) < n:
        ang, s = rng.uniform(0, 2 * np.pi), rng.uniform(min_sep, max_sep) * d
        p = pts[rng.integers(len(pts))] + s * np.array([np.cos(ang), np.sin(ang)])
        if all(np.hypot(*(p - q)) >= min_sep * d for q in pts) and (p > 1).all() and (p < size - 2).all():
            pts.append(p)
    return np.array(pts)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_instances_from_disc_mask_touching_discs(n):
    rng = np.random.default_rng(10 + n)
    for _ in range(15):
        d = rng.uniform(16, 56)
        pts = _touching_discs(rng, n, d)
        sem, _ = disc_labels((160, 160), pts, diameter_px=d)
        inst, found = instances_from_disc_mask(sem, d, micrograph="m.mrc")
        assert len(found) == n, (d, pts.tolist(), found[["x", "y"]].values.tolist())
        err = np.hypot(pts[:, None, 0] - found.x.to_numpy()[None], pts[:, None, 1] - found.y.to_numpy()[None])
        assert err.min(1).max() < 1.0 and err.min(0).max() < 1.0      # every centre found once, within a pixel
        assert ((inst > 0) == (sem > 0)).all() and set(np.unique(inst)) - {0} == set(found.particle_id)
        assert (found.micrograph == "m.mrc").all() and (found.diameter_px == d).all() and (found.score > 0.99).all()


def test_instances_from_disc_mask_border_and_bad_input():
    pts = np.array([[2.0, 50.3], [40.7, 1.5], [70.0, 98.0], [98.5, 60.2]])
    inst, found = instances_from_disc_mask(disc_labels((100, 100), pts, diameter_px=24)[0], 24)
    assert len(found) == 4
    err = np.hypot(pts[:, None, 0] - found.x.to_numpy()[None], pts[:, None, 1] - found.y.to_numpy()[None])
    assert err.min(1).max() < 1.0
    assert len(instances_from_disc_mask(np.zeros((30, 30), bool), 10)[1]) == 0
    with pytest.raises(ValueError, match="threshold"):
        instances_from_disc_mask(np.array([[0, 100], [200, 255]], np.uint8), 3)
    with pytest.raises(ValueError, match="diameter_px"):
        instances_from_disc_mask(np.zeros((8, 8)), 0)
    with pytest.raises(ValueError, match="2D"):
        instances_from_disc_mask(np.zeros((2, 8, 8)), 3)


# ---- the real sample (data/empiar10028-cryoppp) -----------------------------------------------------
@pytest.fixture(scope="module")
def real():
    return load_real_sample("all")


def test_real_sample_loads(real):
    assert [len(load_real_sample(s)) for s in ("train", "valid", "test")] == [4, 1, 5] and len(real) == 10
    assert [r.name for r in load_real_sample("valid")] == ["065_10028"]
    for r in real:
        name, img, mask, parts, px = r                                      # a tuple as well
        assert img.shape == mask.shape == (1024, 1024) and img.dtype == np.float32 and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 1} and px == REAL_SAMPLE_PIXEL_SIZE_A
        assert img.max() <= 255 and 60 < img.mean() < 120                   # grey values as stored, not normalised
        assert (parts.micrograph == f"{name}.png").all()
    assert abs(REAL_SAMPLE_DIAMETER_PX * REAL_SAMPLE_PIXEL_SIZE_A - 300) < 1    # 56 px = 300 Å


def test_real_sample_particle_counts(real):
    disc_area = np.pi * REAL_SAMPLE_DIAMETER_PX**2 / 4
    for r in real:
        n, expected = len(r.particles), r.mask.sum() / disc_area
        assert abs(n / expected - 1) < 0.03, (r.name, n, expected)          # counts per micrograph within 3 %
        redrawn, _ = disc_labels(r.mask.shape, r.particles)
        assert (redrawn != r.mask).sum() < 0.01 * r.mask.sum()               # the discs explain the mask
        # isolated discs: the centre is the centroid of the component
        from scipy import ndimage
        lab, k = ndimage.label(r.mask, structure=np.ones((3, 3)))
        area = np.bincount(lab.ravel())[1:]
        single = np.flatnonzero(np.abs(area - disc_area) < 0.05 * disc_area) + 1
        cy, cx = np.array(ndimage.center_of_mass(r.mask, lab, single)).T
        d = np.hypot(cx[:, None] - r.particles.x.to_numpy()[None], cy[:, None] - r.particles.y.to_numpy()[None])
        assert len(single) > 20 and d.min(1).max() < 0.2


def test_real_sample_wrong_scale_refused(real):
    r = real[0]
    big = r.particles.assign(x=r.particles.x * 4, y=r.particles.y * 4)
    with pytest.raises(ValueError, match=r"061_10028\.png.*outside the 1024x1024 image.*scale"):
        disc_labels(r.mask.shape, big)
    small = r.particles.assign(x=r.particles.x / 4, y=r.particles.y / 4)      # the binned frame: inside, no error
    assert disc_labels((256, 256), small, diameter_px=14)[0].sum() > 0


def test_real_sample_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install -e"):
        load_real_sample("train", root=tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        load_real_sample("validation")
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(real_sample_folder(), copy)
    (copy / "test" / "labels" / "313_10028.png").unlink()
    with pytest.raises(FileNotFoundError, match="313_10028.png: no label file"):
        load_real_sample("test", root=copy)
    from PIL import Image
    Image.fromarray(np.zeros((512, 512), np.uint8)).save(copy / "test" / "labels" / "313_10028.png")
    with pytest.raises(ValueError, match="313_10028.png: label of shape"):
        load_real_sample("test", root=copy)


def test_download_cryoppp_has_no_size_cap_or_deadline(monkeypatch, tmp_path):
    "Full CryoPPP archives hold tens of GB: the download's default 8 GiB cap and 1 h deadline must not apply."
    import cryoseg.datasets as ds
    seen = {}

    def spy(url, dest, **kw):
        seen.update(kw)
        raise ConnectionError("stop here")          # no network in tests
    monkeypatch.setattr(ds, "download", spy)
    with pytest.raises(ConnectionError):
        download_cryoppp(10017, cache_dir=tmp_path, progress=False)
    assert seen.get("max_bytes", "default") is None and seen.get("deadline_s", "default") is None, seen

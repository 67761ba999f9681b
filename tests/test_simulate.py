"Simulator and volumes: physics invariants, ground-truth consistency, reproducibility and bad input (fast, CPU)."
import gzip
import json

import numpy as np
import pytest

from cryoseg.simulate import (SimConfig, add_gaussian_noise, add_shot_noise, apply_ctf, ctf_2d, electron_wavelength_a,
                              euler_to_matrix, footprint_masks, matrix_to_euler, place_particles, project,
                              random_rotations, simulate_dataset, simulate_micrograph)
from cryoseg.volumes import (VOLUME_KINDS, fetch_emdb, fetch_pdb, make_volume, read_volume, resample_volume,
                             volume_from_model)


@pytest.fixture(scope="module")
def vol():
    return make_volume("globular", box_size=32, pixel_size_a=4.0, seed=0)


# ---- volumes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", VOLUME_KINDS)
def test_make_volume_invariants(kind):
    v = make_volume(kind, box_size=32, pixel_size_a=5.0, seed=1)
    assert v.shape == (32, 32, 32) and v.dtype == np.float32 and v.min() >= 0
    zz, yy, xx = np.indices(v.shape)
    com = np.array([(zz * v).sum(), (yy * v).sum(), (xx * v).sum()]) / v.sum()
    assert np.abs(com - 16).max() < 0.5


def test_make_volume_any_pixel_size_same_mass():
    a = make_volume("ring", box_size=40, pixel_size_a=3.0, diameter_a=70, seed=2)
    b = make_volume("ring", box_size=60, pixel_size_a=2.0, diameter_a=70, seed=2)
    assert abs(a.sum() - b.sum()) < 1e-3 * a.sum()


def test_volume_bad_input(tmp_path):
    import mrcfile
    with pytest.raises(ValueError, match="positive"):
        make_volume(pixel_size_a=-2)
    with pytest.raises(ValueError, match="cubic"):
        resample_volume(np.zeros((4, 4, 6)), 1.0, 2.0)
    with mrcfile.new(tmp_path / "a.mrc") as m:
        m.set_data(np.zeros((6, 8, 8), np.float32)); m.voxel_size = 1.0
    with pytest.raises(ValueError, match="a.mrc.*cubic"):
        read_volume(tmp_path / "a.mrc")
    (tmp_path / "none.pdb").write_text("END\n")
    with pytest.raises(ValueError, match="no atoms"):
        volume_from_model(tmp_path / "none.pdb", 1.0)


def _atom(i, el, x, y, z):
    name = "CA" if el == "C" else el
    return f"ATOM  {i:5d} {name:<4s} GLY A{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00 15.00          {el:>2s}\n"


def test_volume_from_model_mass_in_place(tmp_path):
    # two carbons on a line along x: the map's mass centre is between them, on the box centre, and the
    # density is elongated along x (axis 2 of [z, y, x])
    (tmp_path / "m.pdb").write_text(_atom(1, "C", 0, 0, 0) + _atom(2, "C", 10, 0, 0) + "END\n")
    m = volume_from_model(tmp_path / "m.pdb", pixel_size_a=1.0, box_size=32)
    zz, yy, xx = np.indices(m.shape)
    com = np.array([(zz * m).sum(), (yy * m).sum(), (xx * m).sum()]) / m.sum()
    assert np.abs(com - 16).max() < 0.1
    assert m[16, 16, 11] > 10 * m[16, 11, 16] and m[16, 16, 21] > 10 * m[21, 16, 16]


def test_fetch_from_local_server(tmp_path):
    import mrcfile
    from cryoseg.io import serve_folder
    v = make_volume("two_lobed", box_size=24, pixel_size_a=4.0)
    (tmp_path / "site" / "EMD-4321" / "map").mkdir(parents=True)
    with mrcfile.new(tmp_path / "x.mrc") as m:
        m.set_data(v); m.voxel_size = 4.0
    with gzip.open(tmp_path / "site" / "EMD-4321" / "map" / "emd_4321.map.gz", "wb") as f:
        f.write((tmp_path / "x.mrc").read_bytes())
    with serve_folder(tmp_path / "site") as url:
        p = fetch_emdb("emd_4321", cache_dir=tmp_path / "cache", base_url=url, progress=False)
        with pytest.raises(ConnectionError):
            fetch_pdb("1abc", cache_dir=tmp_path / "cache", base_url=url, progress=False)
    got, px = read_volume(p)
    assert px == 4.0 and np.array_equal(got, v)


# ---- orientations and projections ------------------------------------------------------------------
def test_euler_roundtrip_and_convention():
    R = random_rotations(50, 3)
    ang = matrix_to_euler(R)
    assert np.allclose(euler_to_matrix(*ang.T), R, atol=1e-9)
    # RELION: rot only is a passive rotation about z
    a = np.deg2rad(30)
    assert np.allclose(euler_to_matrix(30, 0, 0), [[np.cos(a), np.sin(a), 0], [-np.sin(a), np.cos(a), 0], [0, 0, 1]])


def test_projection_mass_identity_and_direction(vol):
    p = project(vol, random_rotations(4, 0))
    assert np.allclose(p.sum((1, 2)), vol.sum(), rtol=0.01)
    p0 = project(vol, np.eye(3))[0]
    assert np.abs(p0 - vol.sum(0)).max() < 0.03 * p0.max()
    from scipy import ndimage
    b = np.zeros((32, 32, 32), np.float32); b[16, 16, 24] = 1; b = ndimage.gaussian_filter(b, 1.5)
    q = project(b, euler_to_matrix(90, 0, 0)[None])[0]
    assert np.unravel_index(q.argmax(), q.shape) == (8, 16)


@pytest.mark.parametrize("box", [33, 40])
def test_projection_matches_realspace_odd_and_even(box):
    from scipy import ndimage
    v = make_volume("two_lobed", box_size=box, pixel_size_a=4.0, seed=3)
    c = box // 2
    zz, yy, xx = np.mgrid[0:box, 0:box, 0:box] - c
    for A, p in zip(random_rotations(2, 5), project(v, random_rotations(2, 5))):
        X = np.stack([xx, yy, zz], -1) @ A
        ref = ndimage.map_coordinates(v, [X[..., 2] + c, X[..., 1] + c, X[..., 0] + c], order=3).sum(0)
        assert np.abs(ref - p).max() < 0.01 * p.max()


def test_footprints(vol):
    p = project(vol, random_rotations(3, 1))
    f = footprint_masks(p, 0.1)
    assert f.dtype == bool and f.shape == p.shape
    for pi, fi in zip(p, f):
        assert (pi[fi] > 0.1 * pi.max()).all() and (pi[~fi] <= 0.1 * pi.max()).all()


# ---- CTF -----------------------------------------------------------------------------------------
def test_ctf_hand_values():
    assert abs(electron_wavelength_a(300) - 0.019687) < 1e-5
    c = ctf_2d((64, 64), 2.0, 1.0, 1.0, amplitude_contrast=0.1, b_factor_a2=0)
    assert abs(c[0, 0] + 0.1) < 1e-6
    lam = electron_wavelength_a(300)
    s = 5 / (64 * 2.0)
    chi = np.pi * lam * 1e4 * s**2 - np.pi / 2 * 2.7e7 * lam**3 * s**4
    assert abs(c[0, 5] - (-(np.sqrt(1 - 0.01) * np.sin(chi) + 0.1 * np.cos(chi)))) < 1e-4


def test_apply_ctf_dc_and_errors():
    img = np.zeros((32, 32), np.float32); img[16, 16] = 1
    out = apply_ctf(img, 4.0, 1.0, amplitude_contrast=0.07, pad_px=100)
    assert abs(out.sum() + 0.07) < 0.01
    with pytest.raises(ValueError, match="pixel_size_a"):
        apply_ctf(img, -1.0, 1.0)


# ---- placement and noise ---------------------------------------------------------------------------
def test_place_particles_min_distance_and_errors():
    xy = place_particles(30, (200, 200), 20, min_distance_px=18, seed=0)
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)); d[np.diag_indices(30)] = np.inf
    assert d.min() >= 18
    with pytest.raises(ValueError, match="at most"):
        place_particles(1000, (200, 200), 20)


def test_gaussian_snr_and_poisson():
    rng = np.random.default_rng(0)
    clean = np.zeros((400, 400), np.float32); fp = np.zeros_like(clean, bool); fp[:, :200] = True
    clean[fp] = rng.normal(0, 1, fp.sum())
    noisy, info = add_gaussian_noise(clean, 0.2, fp, seed=1)
    est = (noisy[fp].var() - noisy[~fp].var()) / noisy[~fp].var()
    assert abs(est - 0.2) < 0.02 and abs(info["snr_image"] - clean.var() / info["noise_std"] ** 2) < 1e-6
    with pytest.raises(ValueError, match="snr"):
        add_gaussian_noise(clean, 0.0, fp)
    c = add_shot_noise(np.zeros((300, 300)), 20.0, 1.5, seed=0)
    assert abs(c.mean() - 45) < 0.5 and abs(c.var() - 45) < 2


# ---- micrographs and datasets ------------------------------------------------------------------------
def test_simulate_micrograph_truth():
    cfg = SimConfig(shape=(160, 160), n_particles=8)
    r = simulate_micrograph(None, cfg, seed=4)
    assert r.image.shape == (160, 160) and r.image.dtype == np.float32
    assert r.mask.dtype == np.uint8 and r.instances.dtype == np.int32 and r.junk.dtype == np.uint8
    assert np.array_equal(r.mask, (r.instances > 0).astype(np.uint8))
    ids = r.instances[r.particles.y.astype(int), r.particles.x.astype(int)]
    assert np.array_equal(ids, r.particles.particle_id.to_numpy())
    snr = r.clean[r.mask == 1].var() / (r.image - r.clean).var()
    assert abs(snr - cfg.snr) < 0.1 * cfg.snr
    r2 = simulate_micrograph(None, cfg, seed=4)
    assert np.array_equal(r.image, r2.image)


def test_simulate_bad_parameters(vol):
    with pytest.raises(ValueError, match="snr"):
        SimConfig(snr=-1)
    with pytest.raises(ValueError, match="larger than the micrograph"):
        simulate_micrograph(vol, SimConfig(shape=(24, 24)))
    with pytest.raises(ValueError, match="cubic"):
        simulate_micrograph(np.zeros((8, 8, 4)), SimConfig())
    with pytest.raises(ValueError, match="pixel_size_a"):
        SimConfig(pixel_size_a=0)


def test_simulate_dataset_layout(tmp_path):
    cfg = SimConfig(shape=(96, 96), n_particles=3)
    root = simulate_dataset(tmp_path / "d", n_micrographs=2, cfg=cfg, seed=5, progress=False)
    for sub in ("micrographs", "clean", "coordinates", "masks", "instances", "junk"):
        assert sorted(p.stem for p in (root / sub).iterdir()) == ["mic_0000", "mic_0001"]
    meta = json.loads((root / "simulation.json").read_text())
    assert meta["seed"] == 5 and meta["config"]["shape"] == [96, 96]
    with pytest.raises(FileExistsError):
        simulate_dataset(root, n_micrographs=1, cfg=cfg, progress=False)

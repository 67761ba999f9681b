"""Picking on the device (`cryoseg.pick.pick_particles_torch`, `find_peaks_torch`) against the CPU reference
(`pick_particles`, `find_peaks`) on the same maps: isolated and touching discs, noise, particles cut by the
border, crowded clumps. Torch runs on the CPU everywhere, and on CUDA where a device is present (skipped
otherwise). The maths behind the expected agreement is in nbs/08_pick.ipynb, "Picking on the device"."""
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from cryoseg.pick import find_peaks, find_peaks_torch, pick_particles, pick_particles_torch
from cryoseg.testing import soft_discs

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    "The device path on a CPU is many small tensor operations: one thread (restored afterwards)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def discs(shape, xy, diameters, noise=0.0, seed=0):
    "Soft discs (one diameter each) plus Gaussian noise, clipped to [0, 1]: a float32 probability map."
    p = np.zeros(shape, np.float32)
    for c, dd in zip(np.asarray(xy, float), np.broadcast_to(diameters, len(xy))):
        p = np.maximum(p, soft_discs(shape, [c], dd))
    if noise:
        p = p + np.random.default_rng(seed).normal(0, noise, shape).astype(np.float32)
    return np.clip(p, 0, 1).astype(np.float32)


def isolated(seed, d=12, size=128, n=12):
    "Discs at least d + 3 px apart (never touching), some centred within d/3 of the border or just outside."
    rng = np.random.default_rng(seed)
    xy = [[-d / 4, size / 2], [size / 3, size - 1 + d / 5]]          # two cut by the border
    while len(xy) < n:
        c = rng.uniform(d / 3, size - 1 - d / 3, 2)
        if all(np.hypot(*(c - q)) > d + 3 for q in xy):
            xy.append(c)
    return np.array(xy)


def offsets(a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    "For each pick of `b`, the distance (px) to the nearest pick of `a`."
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0)
    return cKDTree(a[["x", "y"]].to_numpy()).query(b[["x", "y"]].to_numpy())[0]


# --- the pieces: exactly the reference's ------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_find_peaks_torch_is_find_peaks(device):
    for m in (1, 3.5, 6):
        z = ndimage.gaussian_filter(np.random.default_rng(int(m)).normal(size=(64, 72)), 1.5)
        for zz, thr in ((z, 0.1), (np.round(z * 20), 1.0), (z, None)):        # quantised: many ties
            for kw in ({}, dict(window_px=3), dict(window_px=4), dict(edge_px=3, max_peaks=4)):
                got = find_peaks_torch(torch.from_numpy(zz).to(device), m, threshold=thr, **kw)
                assert got.device.type == device
                np.testing.assert_array_equal(got.cpu().numpy(), find_peaks(zz, m, threshold=thr, **kw))
    assert find_peaks_torch(np.ones((5, 5)), 1, device=device).shape == (0, 2)    # a constant map: no peak


@pytest.mark.parametrize("device", DEVICES)
def test_find_peaks_torch_with_labels_finds_each_region_alone(device):
    "With labels, the peaks of each region as `find_peaks` finds them on the region alone (others at 0)."
    z = ndimage.gaussian_filter(np.random.default_rng(3).normal(size=(60, 60)), 2.0)
    lab, n = ndimage.label(z > 0)
    zpos = np.where(lab > 0, z, 0)
    for md in (5, 12):                  # 12: peaks of neighbouring regions closer than md, kept on both sides
        got = find_peaks_torch(torch.from_numpy(zpos).to(device), md, threshold=0, window_px=3,
                               labels=torch.from_numpy(lab).long().to(device)).cpu().numpy()
        want = [tuple(q) for i in range(1, n + 1)
                for q in find_peaks(np.where(lab == i, zpos, 0), md, threshold=0, window_px=3)]
        assert sorted(map(tuple, got)) == sorted(want) and len(got) == len(want)
        assert md < 12 or len(want) > len(find_peaks(zpos, md, threshold=0, window_px=3))   # the labels matter


# --- pick_particles_torch: the same table for isolated particles -------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("noise", [0.0, 0.15])
def test_isolated_discs_give_the_same_table(device, seed, noise):
    p = discs((128, 128), isolated(seed), 12 * np.random.default_rng(seed).uniform(0.85, 1.1, 12), noise, seed)
    junk = np.zeros(p.shape, np.uint8)
    junk[40:70, 40:70] = 1
    for kw in ({}, dict(edge_px=6), dict(junk_mask=junk), dict(score="max", min_area_frac=0.05),
               dict(split=False, max_area_frac=None)):
        ref = pick_particles(p, 12, micrograph="m", **kw)
        got = pick_particles_torch(torch.from_numpy(p).to(device), 12, micrograph="m", **kw)
        if not kw:
            assert len(ref) >= 8, len(ref)
        pd.testing.assert_frame_equal(got, ref, rtol=1e-9)


# --- touching and crowded particles: the same picks, centres within the bounds ------------------------------

def touching_map(noise, seed=0, d=12):
    """Touching pairs (d apart), overlapping pairs (0.8 d), a triple, pairs at the border, a pair with a gap, and two
    squares that touch at a corner only."""
    xy, dia = [], []
    for cx, cy, sep, ang in [(20, 20, 1.0, 0), (60, 22, 0.8, 45), (100, 20, 1.0, 90), (20, 64, 0.8, 150),
                             (4, 100, 1.0, 90), (120, 118, 0.9, 20)]:
        a = np.deg2rad(ang)
        xy += [(cx, cy), (cx + sep * d * np.cos(a), cy + sep * d * np.sin(a))]
        dia += [d, d * (0.85 if sep < 1 else 1.0)]
    xy += [(70, 70), (70 + d, 70), (70 + d / 2, 70 + 0.87 * d)]            # a triangle of three
    xy += [(30, 110), (30 + d + 3, 110)]                                      # two apart, a 3 px gap
    dia += [d, d, d, d, d]
    p = discs((128, 136), xy, dia, noise, seed)
    p[100:104, 40:44] = 1.0                                                  # two squares touching at a corner:
    p[104:108, 44:48] = 1.0                                                  # two components, each too small
    return p


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_touching_discs_give_the_same_picks(device, noise):
    p = touching_map(noise)
    for kw in ({}, dict(min_area_frac=0.02), dict(edge_px=4), dict(min_distance_frac=2.0)):
        ref = pick_particles(p, 12, **kw)           # min_distance_frac=2: the pairs stay whole, the gapped pair two
        got = pick_particles_torch(torch.from_numpy(p).to(device), 12, **kw)
        assert len(got) == len(ref) >= (16 if not kw else 8), (len(got), len(ref))
        off, near = cKDTree(ref[["x", "y"]].to_numpy()).query(got[["x", "y"]].to_numpy())
        assert off.max() <= 0.5, off                        # a tie pixel or two at a neck: a fraction of a pixel
        assert np.abs(got.area_px.to_numpy() - ref.area_px.to_numpy()[near]).max() <= 4


@pytest.mark.parametrize("device", DEVICES)
def test_crowded_clumps_agree_within_a_fraction_of_the_diameter(device):
    """Clumps of 3+ particles (80 discs on 256²): where a peak is a shoulder on a ridge that rises to a higher peak,
    the two floods break ties differently; the centres stay within 0.15 d and nearly all within 0.5 px."""
    rng = np.random.default_rng(0)
    p = discs((256, 256), rng.uniform(0, 256, (80, 2)), 16 * rng.uniform(0.8, 1.1, 80), 0.1, 0)
    ref = pick_particles(p, 16)
    got = pick_particles_torch(torch.from_numpy(p).to(device), 16)
    off = offsets(ref, got)
    assert len(got) == len(ref) > 50
    assert np.median(off) < 0.05 and off.max() < 0.15 * 16 and (off > 0.5).mean() < 0.05, np.sort(off)[-5:]


# --- the entry points ---------------------------------------------------------------------------------------

def test_pick_particles_device_argument_takes_the_device_path(monkeypatch):
    import cryoseg.pick as pick
    p = touching_map(0.0)
    calls = []
    real = pick.pick_particles_torch
    monkeypatch.setattr(pick, "pick_particles_torch", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    pd.testing.assert_frame_equal(pick.pick_particles(p, 12, device="cpu"), real(p, 12, device="cpu"))
    assert calls == [1]
    pick.pick_particles(torch.from_numpy(p), 12)                 # a CPU tensor: the reference
    pick.pick_particles(p, 12)
    assert calls == [1]


@CUDA
def test_a_cuda_tensor_is_picked_on_the_gpu_like_on_the_cpu():
    p = touching_map(0.1)
    on_gpu = pick_particles(torch.from_numpy(p).cuda(), 12, micrograph="m")
    on_cpu = pick_particles_torch(p, 12, micrograph="m", device="cpu")
    assert len(on_gpu) == len(on_cpu) and offsets(on_cpu, on_gpu).max() < 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_errors_are_the_references(device):
    p = torch.from_numpy(touching_map(0.0)).to(device)
    for args, kw, words in [((p, 0), {}, "diameter_px"), ((p[None], 12), {}, "(H, W) P(particle)"),
                            ((p * np.nan, 12), {}, "NaN"), ((p, 12), dict(score="median"), "score must be"),
                            ((p, 12), dict(max_area_frac=0), "max_area_frac > 0"),
                            ((p, 12), dict(junk_mask=np.zeros((5, 5))), "junk_mask shape")]:
        with pytest.raises(ValueError) as e:
            pick_particles_torch(*args, **kw)
        assert words in str(e.value), (words, str(e.value))
        with pytest.raises(ValueError) as e_ref:
            pick_particles(args[0].cpu().numpy(), *args[1:], **kw)
        assert words in str(e_ref.value)


def test_empty_and_full_maps():
    for p in (np.zeros((32, 32), np.float32), np.ones((40, 40), np.float32)):
        for kw in ({}, dict(max_area_frac=None)):
            pd.testing.assert_frame_equal(pick_particles_torch(p, 12, device="cpu", **kw), pick_particles(p, 12, **kw))


def test_a_strided_tensor_is_picked_like_its_copy():
    p = touching_map(0.0)
    got = pick_particles_torch(torch.from_numpy(p.T.copy()).T, 12, device="cpu")     # a transposed view
    pd.testing.assert_frame_equal(got, pick_particles_torch(p, 12, device="cpu"))

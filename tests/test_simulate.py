"""Physics and simulator tests that notebooks cannot hold well: torch-ctf's convention (a development
dependency), hypothesis fuzzing, and fresh processes (cold caches, light imports). Behaviour is tested in
nbs/02a_volumes, 02b_ctf, 02c_projection and 02d_simulate."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cryoseg.ctf import CTF, ctf_2d, ctf_2d_reference
from cryoseg.projection import euler_to_matrix, matrix_to_euler, random_rotations
from cryoseg.simulate import SimConfig, place_particles, simulate_micrograph


# ---- torch-ctf pins the convention ---------------------------------------------------------------------
@pytest.mark.parametrize("rfft,fftshift", [(True, False), (False, True)])
def test_ctf_agrees_with_torch_ctf(rfft, fftshift):
    """torch-ctf's CTF is RELION's, the negative of cryoseg's (CTF(0) = +A there), without the B-factor
    envelope; in float32 it is right to ~2e-3 where χ reaches ~180 rad at Nyquist."""
    torch_ctf = pytest.importorskip("torch_ctf")
    import torch
    c = CTF(2.0, 1.4, 25.0, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1, phase_shift_deg=20.0)
    H, W, px = 96, 128, 1.3
    theirs = -torch_ctf.calculate_ctf_2d(
        defocus=torch.tensor((c.defocus_u_um + c.defocus_v_um) / 2), astigmatism=(c.defocus_u_um - c.defocus_v_um) / 2,
        astigmatism_angle=c.defocus_angle_deg, voltage=c.voltage_kv, spherical_aberration=c.cs_mm,
        amplitude_contrast=c.amplitude_contrast, phase_shift=c.phase_shift_deg, pixel_size=px, image_shape=(H, W),
        rfft=rfft, fftshift=fftshift).numpy()
    ours = ctf_2d((H, W), px, c, rfft=rfft, fftshift=fftshift)
    assert theirs.shape == ours.shape
    assert np.abs(theirs - ours).max() < 3e-3
    assert abs(ours[H // 2 if fftshift else 0, W // 2 if fftshift and not rfft else 0] + np.sin(np.deg2rad(20) + np.arcsin(0.1))) < 1e-5


# ---- fuzzing ------------------------------------------------------------------------------------------
ctfs = st.builds(CTF, defocus_u_um=st.floats(-1.0, 5.0), defocus_v_um=st.floats(-1.0, 5.0),
                 defocus_angle_deg=st.floats(-360, 360), voltage_kv=st.sampled_from([100.0, 200.0, 300.0]),
                 cs_mm=st.floats(0, 5), amplitude_contrast=st.floats(0, 0.3), b_factor_a2=st.floats(0, 300),
                 phase_shift_deg=st.floats(-180, 180))


@settings(max_examples=60, deadline=None)
@given(c=ctfs, h=st.integers(2, 40), w=st.integers(2, 40), px=st.floats(0.5, 5.0), full=st.booleans())
def test_fast_ctf_equals_reference(c, h, w, px, full):
    fast = ctf_2d((h, w), px, c, rfft=not full, fftshift=full)
    ref = ctf_2d_reference((h, w), px, c, rfft=not full, fftshift=full)
    assert fast.shape == ref.shape and fast.dtype == np.float32
    # the fast CTF computes χ in float32: its error grows with the largest |χ| on the grid (at the corner)
    lam, s2 = 12.2643247 / np.sqrt(c.voltage_kv * 1e3 * (1 + 0.978466e-3 * c.voltage_kv)), 2 / (2 * px) ** 2
    chi_max = np.pi * lam * 1e4 * max(abs(c.defocus_u_um), abs(c.defocus_v_um)) * s2 \
        + np.pi / 2 * c.cs_mm * 1e7 * lam**3 * s2**2 + 2 * np.pi
    assert np.abs(fast - ref).max() < 4e-7 * chi_max + 1e-6


@settings(max_examples=40, deadline=None)
@given(c=ctfs)
def test_ctf_round_trips_through_json(c):
    assert CTF(**json.loads(json.dumps(dataclasses.asdict(c)))) == c


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 30), d=st.floats(4, 30), frac=st.floats(0.3, 1.5), clusters=st.integers(0, 3),
       seed=st.integers(0, 2**31))
def test_place_particles_properties(n, d, frac, clusters, seed):
    try:
        xy = place_particles(n, (128, 160), d, min_distance_px=frac * d, n_clusters=clusters, seed=seed)
    except ValueError as e:
        assert "fit" in str(e) or "could place only" in str(e)
        return
    assert xy.shape == (n, 2) and np.array_equal(xy, np.round(xy))
    assert (xy >= d / 2 - 1e-9).all() and (xy[:, 0] <= 159 - d / 2).all() and (xy[:, 1] <= 127 - d / 2).all()
    if n > 1:
        dist = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + np.diag(np.full(n, np.inf))
        assert dist.min() >= frac * d - 1e-9
    assert np.array_equal(xy, place_particles(n, (128, 160), d, min_distance_px=frac * d, n_clusters=clusters, seed=seed))


@settings(max_examples=60, deadline=None)
@given(rot=st.floats(-180, 180), tilt=st.floats(0.5, 179.5), psi=st.floats(-180, 180))
def test_euler_round_trip(rot, tilt, psi):
    R = euler_to_matrix(rot, tilt, psi)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(euler_to_matrix(*matrix_to_euler(R)), R, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(shape=st.tuples(st.integers(8, 4096), st.integers(8, 4096)), snr=st.floats(1e-3, 10),
       defocus=st.tuples(st.floats(0.2, 2), st.floats(0, 2)), noise=st.sampled_from(["gaussian", "shot", "none"]),
       ctf=st.booleans(), carbon=st.booleans(), phase_mode=st.sampled_from(["auto", "physical", "normalised"]),
       detector=st.sampled_from(["ideal", "counting"]), realistic=st.booleans())
def test_simconfig_round_trips_through_json(shape, snr, defocus, noise, ctf, carbon, phase_mode, detector, realistic):
    kw = dict(shape=shape, snr=snr, defocus_um=(defocus[0], defocus[0] + defocus[1]), noise=noise, ctf=ctf,
              carbon=carbon, phase_mode=phase_mode, detector=detector)
    cfg = SimConfig.realistic(**kw) if realistic else SimConfig(**kw)
    assert SimConfig(**json.loads(json.dumps(cfg.to_dict()))) == cfg


# ---- shot noise is the weak-phase intensity -------------------------------------------------------------
def test_shot_noise_mean_is_the_weak_phase_intensity():
    """At a high dose the counts' mean is D·p²·(1 + 2C), C = CTF ⊛ φ the clean contrast (REFERENCE.md).

    Tolerances from Poisson statistics. Each pixel's count N_i has mean λ_i = n0 (1 + 2 C_i), n0 = D p², and
    variance λ_i, so z_i = (N_i − λ_i) / sqrt(λ_i) has mean 0 and variance 1: over n independent pixels mean(z)
    has standard error 1/sqrt(n) and the sample variance of z standard error sqrt(2/n) (λ_i ≈ 1.6e6, where the
    Poisson law is Gaussian to ~1e-3). The least-squares slope b (through the origin) of y_i = (N_i/n0 − 1)/2 on
    C_i estimates 1 with standard error sqrt(Σ C_i² var(y_i)) / Σ C_i² ≤ sqrt((1 + 2 max C) / (4 n0 Σ C_i²)).
    Every check allows 5 standard errors (a false alarm about once in 2 million runs). The old model, mean
    n0 (1 + C), gives b = 1/2, thousands of standard errors away, and mean(z) far from 0."""
    cfg = SimConfig(noise="shot", dose_e_a2=1e5, phase_mode="physical")
    res = simulate_micrograph(None, cfg, seed=5, device="cpu")
    n0 = cfg.dose_e_a2 * cfg.pixel_size_a**2
    C, N = res.clean.astype(np.float64), res.image.astype(np.float64)
    lam = n0 * (1 + 2 * C)
    z = (N - lam) / np.sqrt(lam)
    n = z.size
    assert abs(z.mean()) < 5 / np.sqrt(n), z.mean()
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n), z.var()
    y = (N / n0 - 1) / 2
    b = (y * C).sum() / (C * C).sum()
    se = np.sqrt((1 + 2 * C.max()) / (4 * n0 * (C * C).sum()))
    assert abs(b - 1) < 5 * se, (b, se)
    assert 20 * se < 0.5                                  # the test can tell 1 from the old 1/2


def test_shot_noise_footprint_snr_is_measured():
    """The footprint SNR reported for a shot-noise micrograph, 4·D·p²·var(C over the footprints), is the one
    measured on the counts: var(signal 2·n0·C over the footprints) / var(N − λ). The measured noise variance
    has relative standard error sqrt(2/n) ≈ 0.6 % over n = 256² pixels, and its mean is n0 (1 + 2 mean C),
    |mean C| < 0.01 here: 3 % covers both with room; the old report (n0·var C) was 4× too small."""
    cfg = SimConfig(noise="shot", dose_e_a2=40.0)
    res = simulate_micrograph(None, cfg, seed=2, device="cpu")
    n0 = cfg.dose_e_a2 * cfg.pixel_size_a**2
    C, N, fp = res.clean.astype(np.float64), res.image.astype(np.float64), res.mask == 1
    assert abs(C.mean()) < 0.01
    measured = np.var(2 * n0 * C[fp]) / np.var(N - n0 * (1 + 2 * C))
    assert abs(res.params["snr_footprint"] / measured - 1) < 0.03, (res.params["snr_footprint"], measured)


# ---- fresh processes ------------------------------------------------------------------------------------
def test_physics_modules_import_without_torch_or_matplotlib():
    code = ("import sys, cryoseg.volumes, cryoseg.ctf, cryoseg.projection, cryoseg.simulate; "
            "print(','.join(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing the physics modules pulled in {out}"


def test_caches_do_not_change_results(tmp_path):
    "A micrograph simulated in a fresh process (cold caches) equals the same one here after the caches are warm."
    cfg = dict(shape=(128, 160), n_particles=3, carbon=True, n_contaminants=1, ice_gradient=0.2)
    for seed in (1, 2):                                    # warm: volume, DFT, stats and CTF caches
        simulate_micrograph(None, SimConfig(**cfg), seed=seed)
    warm = simulate_micrograph(None, SimConfig(**cfg), seed=3)
    import torch   # same thread count in both processes (tests/test_train.py sets 1): float sums depend on it
    code = (f"import sys, numpy as np, torch; torch.set_num_threads({torch.get_num_threads()}); "
            "from cryoseg.simulate import SimConfig, simulate_micrograph; "
            f"r = simulate_micrograph(None, SimConfig(**{cfg!r}), seed=3, device='cpu'); "
            "np.savez(sys.argv[1], image=r.image, instances=r.instances, junk=r.junk)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "cold.npz")], check=True)
    cold = np.load(tmp_path / "cold.npz")
    assert np.array_equal(cold["image"], warm.image)
    assert np.array_equal(cold["instances"], warm.instances) and np.array_equal(cold["junk"], warm.junk)


def test_random_rotations_are_process_independent(tmp_path):
    code = "import sys, numpy as np; from cryoseg.projection import random_rotations; np.save(sys.argv[1], random_rotations(5, 11))"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "r.npy")], check=True)
    assert np.array_equal(np.load(tmp_path / "r.npy"), random_rotations(5, 11))

"Dense CRF: agreement with the exact float64 reference, invariants and bad input (fast, CPU)."
from dataclasses import replace

import numpy as np
import pytest
import torch

from cryoseg.crf import (CRFParams, crf_bruteforce, crf_pydensecrf, crf_torch, crf_tiled, dense_crf,
                         crf_mean_field, crf_feature_image)
from cryoseg.testing import toy_crf_problem

# Tolerances we promise (measured on 24x24 toys, 5 iterations, the parameter sets below, seeds 0-3):
#   torch (bilateral grid, default 1.5 cells/σ): labels agree >= 99% of pixels, max |ΔQ| < 0.1, mean |ΔQ| < 0.005
#     (measured: agreement >= 99.6%, max 0.063, mean <= 0.0027); with 3 cells/σ: max |ΔQ| < 0.03
#   pydensecrf (permutohedral lattice): labels agree >= 99% of pixels for typical kernels (sets 0, 1, 3);
#     for set 2 (θα = half the image, no smoothness term, weak unary) the lattice reaches only 97.7-98.8%,
#     so there we require >= 97% overall and >= 99% on pixels where the reference is decided
#     (|Q_ref - 0.5| > 0.1); 99th percentile |ΔQ| < 0.25, mean |ΔQ| < 0.015
#     (measured: single pixels reach |ΔQ| 0.48 with θγ = 1 px, the lattice's worst case).
PARAMS = [
    CRFParams(sxy_gaussian_px=3, w_gaussian=3, sxy_bilateral_px=5, s_intensity=0.5, w_bilateral=5, lowpass_sigma_px=1),
    CRFParams(sxy_gaussian_px=1, w_gaussian=3, sxy_bilateral_px=8, s_intensity=0.3, w_bilateral=10, lowpass_sigma_px=0),
    CRFParams(sxy_gaussian_px=2, w_gaussian=0, sxy_bilateral_px=12, s_intensity=1.0, w_bilateral=4, lowpass_sigma_px=2),
    CRFParams(sxy_gaussian_px=4, w_gaussian=5, sxy_bilateral_px=5, s_intensity=0.5, w_bilateral=0, n_iter=10),
]


@pytest.mark.parametrize("method", ["torch", "pydensecrf"])
@pytest.mark.parametrize("pi", range(len(PARAMS)))
@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_reference(method, pi, seed):
    prob, img, _ = toy_crf_problem(24, seed=seed)
    par = PARAMS[pi]
    ref = crf_bruteforce(prob, img, par)
    out = dense_crf(prob, img, par, method=method)
    agree = (out > 0.5) == (ref > 0.5)
    d = np.abs(out - ref)
    if method == "torch":
        assert agree.mean() >= 0.99
        assert d.max() < 0.1 and d.mean() < 0.005
        fine = np.abs(crf_torch(prob, img, replace(par, grid_cells_per_sigma=3.0)) - ref)
        assert fine.max() < 0.03 and fine.mean() <= d.mean() + 1e-4     # a finer grid converges to the reference
    else:
        if pi == 2:
            assert agree.mean() >= 0.97
            assert agree[np.abs(ref - 0.5) > 0.1].mean() >= 0.99
        else:
            assert agree.mean() >= 0.99
        assert np.quantile(d, 0.99) < 0.25 and d.mean() < 0.015


@pytest.mark.parametrize("method", ["torch", "pydensecrf"])
def test_three_labels_and_general_compat(method):
    rng = np.random.default_rng(3)
    H, W = 20, 22
    p = rng.dirichlet([1, 1, 1], size=(H, W)).transpose(2, 0, 1)
    img = rng.normal(size=(H, W))
    mu = np.array([[0, 1, 2], [1, 0, 1], [2, 1, 0]], float)
    par = CRFParams(sxy_gaussian_px=2, w_gaussian=2, sxy_bilateral_px=6, s_intensity=0.5, w_bilateral=3, compat=mu)
    ref = crf_bruteforce(p, img, par)
    out = dense_crf(p, img, par, method=method)
    assert out.shape == (3, H, W)
    assert (out.argmax(0) == ref.argmax(0)).mean() >= 0.99
    assert np.abs(out - ref).max() < (0.1 if method == "torch" else 0.5)


@pytest.mark.parametrize("method", ["torch", "pydensecrf", "bruteforce"])
def test_zero_pairwise_is_unary_argmax(method):
    prob, img, _ = toy_crf_problem(24, seed=2)
    par = CRFParams(w_gaussian=0, w_bilateral=0)
    out = dense_crf(prob, img, par, method=method)
    np.testing.assert_array_equal(out > 0.5, prob > 0.5)
    np.testing.assert_allclose(out, prob, atol=1e-5)
    # n_iter = 0 is the same
    out0 = dense_crf(prob, img, CRFParams(n_iter=0), method=method)
    np.testing.assert_allclose(out0, prob, atol=1e-5)


@pytest.mark.parametrize("method", ["torch", "pydensecrf", "bruteforce"])
def test_valid_probabilities_and_deterministic(method):
    rng = np.random.default_rng(4)
    p = rng.dirichlet([0.5, 0.5], size=(24, 24)).transpose(2, 0, 1)
    p[:, :3] = [[[1.0]], [[0.0]]]                      # exact zeros and ones
    img = rng.normal(size=(24, 24)) * 100 + 5e3        # any intensity scale
    a = dense_crf(p, img, CRFParams(sxy_bilateral_px=6), method=method)
    b = dense_crf(p, img, CRFParams(sxy_bilateral_px=6), method=method)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == p.shape
    assert np.all(np.isfinite(a)) and a.min() >= 0 and a.max() <= 1
    np.testing.assert_allclose(a.sum(0), 1, atol=1e-5)


def test_intensity_scale_invariance():
    "The feature image is z-scored: an affine change of the micrograph's intensities changes nothing."
    prob, img, _ = toy_crf_problem(24, seed=5)
    par = PARAMS[0]
    np.testing.assert_allclose(crf_torch(prob, img, par), crf_torch(prob, 37 * img + 1000, par), atol=1e-4)
    np.testing.assert_allclose(crf_bruteforce(prob, img, par), crf_bruteforce(prob, 37 * img + 1000, par), atol=1e-5)  # img is float32


def test_transpose_equivariance():
    prob, img, _ = toy_crf_problem(24, seed=6)
    par = PARAMS[0]
    np.testing.assert_allclose(crf_bruteforce(prob.T, img.T, par), crf_bruteforce(prob, img, par).T, atol=1e-12)
    np.testing.assert_allclose(crf_torch(prob.T, img.T, par), crf_torch(prob, img, par).T, atol=1e-5)


def test_bilateral_respects_edges():
    "With only the appearance kernel and a sharp intensity edge, labels do not leak across the edge."
    H, W = 24, 24
    img = np.zeros((H, W), np.float32); img[:, 12:] = 10
    prob = np.full((H, W), 0.45, np.float32); prob[:, 12:14] = 0.9    # confident strip right of the edge
    par = CRFParams(w_gaussian=0, w_bilateral=10, sxy_bilateral_px=20, s_intensity=0.2, lowpass_sigma_px=0)
    for m in ("torch", "bruteforce", "pydensecrf"):
        out = dense_crf(prob, img, par, method=m)
        assert (out[:, 12:] > 0.5).all(), m          # the right half follows the confident strip
        assert (out[:, :12] < 0.5).all(), m          # the left half does not


def test_mean_field_is_differentiable():
    prob, img, _ = toy_crf_problem(16, seed=7)
    par = PARAMS[0]
    logp = torch.log(torch.as_tensor(np.stack([1 - prob, prob])).clamp(1e-5, 1)).double()
    feat = crf_feature_image(img, par.lowpass_sigma_px, dtype=torch.float64)
    w = torch.tensor([3.0, 5.0], dtype=torch.float64, requires_grad=True)
    q = crf_mean_field(logp, feat, replace(par, n_iter=3), w_gaussian=w[0], w_bilateral=w[1])
    loss = q[1].sum()
    loss.backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    # the gradient matches finite differences
    with torch.no_grad():
        h = 1e-5
        fp = crf_mean_field(logp, feat, replace(par, n_iter=3), w_gaussian=w[0] + h, w_bilateral=w[1])[1].sum()
        fm = crf_mean_field(logp, feat, replace(par, n_iter=3), w_gaussian=w[0] - h, w_bilateral=w[1])[1].sum()
    assert abs(float((fp - fm) / (2 * h)) - float(w.grad[0])) < 1e-5 * max(1, abs(float(w.grad[0])))


def test_tiled_matches_untiled():
    prob, img, _ = toy_crf_problem(100, seed=8)
    par = replace(PARAMS[0], sxy_bilateral_px=6)
    whole = crf_torch(prob, img, par)
    tiled = crf_tiled(prob, img, par, tile_size=40)
    assert np.abs(tiled - whole).max() < 0.05
    np.testing.assert_allclose(crf_tiled(prob, img, par, tile_size=200), whole, atol=1e-6)
    pd_whole = crf_pydensecrf(prob, img, par)
    pd_tiled = crf_tiled(prob, img, par, tile_size=40, method="pydensecrf")
    assert ((pd_whole > .5) == (pd_tiled > .5)).mean() > 0.99
    t3 = crf_tiled(np.stack([1 - prob, prob]), img, par, tile_size=40)
    assert t3.shape == (2, 100, 100)


@pytest.mark.parametrize("method", ["torch", "pydensecrf", "bruteforce"])
def test_bad_inputs(method):
    prob, img, _ = toy_crf_problem(16, seed=9)
    f = lambda p, i: dense_crf(p, i, method=method)
    with pytest.raises(ValueError, match="shape mismatch"):
        f(prob, img[:, :-1])
    with pytest.raises(ValueError, match="NaN"):
        f(np.where(prob > 0.9, np.nan, prob), img)
    with pytest.raises(ValueError, match="img contains"):
        bad = img.copy(); bad[0, 0] = np.inf; f(prob, bad)
    with pytest.raises(ValueError, match="logits"):
        f(prob * 10 - 5, img)
    with pytest.raises(ValueError, match="must sum to 1"):
        f(np.stack([prob, prob]), img)
    with pytest.raises(ValueError, match="2D"):
        f(prob, img[None])
    with pytest.raises(ValueError, match="real numeric"):
        f(prob.astype(object), img)
    # non-contiguous, wrong-dtype and torch inputs are converted
    p2 = np.asfortranarray(prob.astype(np.float64)); i2 = torch.as_tensor(img.astype(np.float16))
    out = f(p2, i2)
    assert out.dtype == np.float32 and out.shape == prob.shape
    np.testing.assert_allclose(out, f(prob, img.astype(np.float16).astype(np.float32)), atol=1e-6)
    # rounding-level deviation from sum 1 is renormalised silently
    p3 = np.stack([1 - prob, prob]) * (1 + 1e-4)
    np.testing.assert_allclose(f(p3, img)[1], f(prob, img), atol=1e-4)


def test_bad_params_and_method():
    prob, img, _ = toy_crf_problem(16)
    with pytest.raises(ValueError, match="unknown CRF method"):
        dense_crf(prob, img, method="convcrf")
    with pytest.raises(ValueError, match="max_pixels"):
        crf_bruteforce(np.zeros((100, 100)), np.zeros((100, 100)))
    with pytest.raises(ValueError, match="s_intensity"):
        CRFParams(s_intensity=-1)
    with pytest.raises(ValueError, match="but prob has 2 labels"):
        dense_crf(prob, img, CRFParams(compat=np.zeros((3, 3))))


def test_cpu_blocking_matches_one_piece(monkeypatch):
    "The cache-blocked CPU filtering gives the same result as filtering in one piece (the CUDA code path)."
    import cryoseg.crf as crf
    prob, img, _ = toy_crf_problem(100, seed=10)
    par = replace(PARAMS[0], sxy_bilateral_px=6)
    one_piece = crf_torch(prob, img, par)                 # 100 x 100 < one block
    monkeypatch.setattr(crf, "CPU_CHUNK_PX", 700)         # blocks of 7 rows, halos of 15 rows
    blocked = crf_torch(prob, img, par)
    np.testing.assert_allclose(blocked, one_piece, atol=2e-6)

"""CUDA paths (simulation, tiled inference, training with AMP, dense CRF): each GPU result is checked against
the CPU result of the same call. Skipped where no CUDA device is present (CI has none); run them on a GPU
machine with `pytest tests/test_gpu.py`."""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _discs(shape=(256, 256), n=12, d=20, contrast=1.0, seed=0):
    "Dark discs in unit Gaussian noise: (image float32, mask uint8)."
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    mask = np.zeros(shape, np.uint8)
    for cy, cx in rng.uniform(d, np.array(shape) - d, (n, 2)):
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= (d / 2) ** 2] = 1
    return (rng.normal(size=shape) - contrast * mask).astype(np.float32), mask


def test_to_numpy_chunks_through_pinned_buffer():
    from cryoseg.core import STAGING_ELEMENTS, to_numpy
    for shape in [(3, 4), (1000, 4099), (2, 2049, 2049), (STAGING_ELEMENTS,)]:
        y = torch.randn(shape, device="cuda")
        a = to_numpy(y)
        assert a.shape == shape and a.flags.c_contiguous
        np.testing.assert_array_equal(a, y.cpu().numpy())
    u = to_numpy(torch.randint(0, 255, (5000, 5000), dtype=torch.uint8, device="cuda"))
    assert u.dtype == np.uint8 and u.shape == (5000, 5000)


def test_to_numpy_from_several_threads():
    from concurrent.futures import ThreadPoolExecutor
    from cryoseg.core import to_numpy
    ys = [torch.full((3000, 3000), float(i), device="cuda") for i in range(8)]
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(to_numpy, ys))
    for i, a in enumerate(outs):
        assert (a == i).all()


def test_normalize_on_the_gpu_equals_numpy():
    from cryoseg.preprocess import normalize
    x = np.random.default_rng(0).gamma(2.0, 3.0, (2100, 2100)).astype(np.float32)
    np.testing.assert_allclose(normalize(torch.from_numpy(x).cuda()).cpu().numpy(), normalize(x), atol=1e-6)


def test_crf_cuda_matches_cpu():
    from cryoseg.crf import CRFParams, dense_crf
    img, mask = _discs()
    rng = np.random.default_rng(1)
    prob = (1 / (1 + np.exp(-(3 * (mask - 0.5) + rng.normal(0, 1.5, mask.shape))))).astype(np.float32)
    q_cpu = dense_crf(prob, img, CRFParams(n_iter=5), device="cpu")
    q_gpu = dense_crf(prob, img, CRFParams(n_iter=5), device="cuda")
    assert q_gpu.shape == prob.shape and q_gpu.dtype == np.float32
    assert np.abs(q_gpu - q_cpu).mean() < 1e-3
    assert ((q_gpu > 0.5) == (q_cpu > 0.5)).mean() > 0.999
    # and the CRF did something: closer to the truth than the unary alone
    assert ((q_gpu > 0.5) == mask).mean() > ((prob > 0.5) == mask).mean()


def test_simulate_cuda_matches_cpu():
    from cryoseg.simulate import SimConfig, simulate_micrograph
    cfg = SimConfig(shape=(256, 256), n_particles=8)
    a = simulate_micrograph(cfg=cfg, seed=3, device="cpu")
    b = simulate_micrograph(cfg=cfg, seed=3, device="cuda")
    np.testing.assert_allclose(a.particles[["x", "y"]].to_numpy(), b.particles[["x", "y"]].to_numpy())
    assert b.image.shape == a.image.shape and b.image.dtype == a.image.dtype
    inter = ((a.mask > 0) & (b.mask > 0)).sum(); union = ((a.mask > 0) | (b.mask > 0)).sum()
    assert inter / union > 0.98
    # the clean image agrees; the noise is drawn on the device (another realisation, same statistics)
    np.testing.assert_allclose(b.clean, a.clean, atol=1e-4 * np.abs(a.clean).max())
    sd_a, sd_b = (a.image - a.clean).std(), (b.image - b.clean).std()
    assert abs(sd_b / sd_a - 1) < 0.02, (sd_a, sd_b)
    c = simulate_micrograph(cfg=cfg, seed=3, device="cuda")
    np.testing.assert_array_equal(c.image, b.image)          # reproducible on the same device


def test_predict_tiled_cuda_matches_cpu():
    from cryoseg.predict import predict_tiled
    from cryoseg.models import get_model
    torch.manual_seed(0)
    model = get_model("unet").eval()
    img, _ = _discs((600, 700))
    p_cpu = predict_tiled(model, img, tile_size=256, overlap=32, device="cpu")
    p_gpu = predict_tiled(model, img, tile_size=256, overlap=32, device="cuda", amp=False)
    np.testing.assert_allclose(p_gpu, p_cpu, atol=1e-3)
    p_amp = predict_tiled(model, img, tile_size=256, overlap=32, device="cuda", amp=True)
    assert p_amp.dtype == np.float32 and np.abs(p_amp - p_cpu).max() < 0.05


def test_predict_many_cuda_matches_cpu_one_at_a_time():
    "Micrographs sharing batches on the GPU (what `cryoseg predict --micrographs-per-batch` does) give each one's own map."
    from cryoseg.predict import predict_many, predict_tiled
    from cryoseg.models import get_model
    torch.manual_seed(0)
    model = get_model("unet").eval()
    imgs = [_discs((600, 700), seed=s)[0] for s in range(3)] + [_discs((400, 400), seed=3)[0]]
    together = predict_many(model, imgs, tile_size=256, overlap=32, device="cuda", amp=False, tta="rot180")
    for img, p in zip(imgs, together):
        np.testing.assert_allclose(p, predict_tiled(model, img, tile_size=256, overlap=32, device="cpu", tta="rot180"),
                                   atol=1e-3)


def test_cli_predict_batched_micrographs_on_cuda(tmp_path):
    "`cryoseg predict --device cuda --micrographs-per-batch 3` writes the maps the CPU writes one micrograph at a time."
    from cryoseg.cli.main import main
    from cryoseg.io import read_micrograph
    from cryoseg.testing import tiny_model
    model, mics = tiny_model(tmp_path, n=4)
    common = ["predict", "--model", str(model), "--data", str(mics), "--quiet"]
    assert main(common + ["--out", str(tmp_path / "cpu"), "--device", "cpu", "--micrographs-per-batch", "1"]) == 0
    assert main(common + ["--out", str(tmp_path / "gpu"), "--device", "cuda", "--micrographs-per-batch", "3"]) == 0
    for k in range(4):
        a = read_micrograph(tmp_path / "cpu" / "probabilities" / f"m{k}.mrc", check=False)[0]
        b = read_micrograph(tmp_path / "gpu" / "probabilities" / f"m{k}.mrc", check=False)[0]
        assert np.abs(a - b).max() < 0.05          # AMP on the GPU


def test_fit_cuda_amp_learns_and_loads_on_cpu(tmp_path):
    from cryoseg.train import TrainConfig, fit, load_checkpoint
    tr = [_discs(seed=s, contrast=1.5) for s in range(4)]
    va = [_discs(seed=10 + s, contrast=1.5) for s in range(2)]
    cfg = TrainConfig(epochs=6, crop_size=128, batch_size=8, device="cuda", progress=False, out_dir=str(tmp_path))
    out = fit(cfg, ([i for i, _ in tr], [m for _, m in tr]), ([i for i, _ in va], [m for _, m in va]))
    loss = [row["train_loss"] for row in out["history"]]
    assert np.isfinite(loss).all() and loss[-1] < loss[0]
    assert out["best_metrics"]["val_iou"] > 0.5
    model, ckpt = load_checkpoint(tmp_path / "best.pt", device="cpu")
    assert next(model.parameters()).device.type == "cpu" and ckpt["epoch"] == out["best_epoch"]

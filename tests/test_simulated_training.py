"""Training on fresh simulated micrographs every epoch (issue 16): `cryoseg.data.SimulatedDataset` and
`cryoseg train --simulate CONFIG.json`: a tiny run end to end, the checkpoint's scale and picking record, the
record of the simulation, and the refusals (bad config file, --simulate with --data, a --val at another scale)."""
import json

import numpy as np
import pytest
import torch

from cli_helpers import assert_one_line_error, run
from cryoseg.cli.train import PICK_THRESHOLDS
from cryoseg.data import SimulatedDataset, simulated_micrographs
from cryoseg.simulate import SimConfig

torch.set_num_threads(1)

TINY = dict(shape=[128, 128], n_particles=4, box_size=32, pixel_size_a=5.0)


def write_config(path, **fields):
    path.write_text(json.dumps(fields))
    return path


def test_train_simulate_end_to_end(capsys, tmp_path):
    "A tiny --simulate run finishes; best.pt carries the simulation's scale and a fitted picking threshold."
    cfg = write_config(tmp_path / "cfg.json", **TINY, n_micrographs=2)
    rc, out, err = run(capsys, "train", "--simulate", cfg, "--out", tmp_path / "m", "--epochs", 2, "--set",
                       "samples_per_epoch=16", "--set", "crop_size=48", "--device", "cpu", "--quiet")
    assert rc == 0, err
    from cryoseg.train import checkpoint_info
    info = checkpoint_info(tmp_path / "m" / "best.pt")
    sim = SimConfig(**TINY)
    diameter = simulated_micrographs(sim, 1, seed=0)[0].params["diameter_px"]
    assert info["scale"]["pixel_size_a"] == 5.0
    assert info["scale"]["diameter_px"] == pytest.approx(diameter, rel=1e-6)
    assert info["scale"]["diameter_a"] == pytest.approx(5.0 * diameter, rel=1e-6)
    pick = info["picking"]
    assert pick is not None and pick["threshold"] in PICK_THRESHOLDS
    assert (pick["n_micrographs"], pick["n_true"]) == (2, 2 * TINY["n_particles"])  # --sim-val 2, their tables
    assert "picking threshold" in out
    doc = json.loads((tmp_path / "m" / "cryoseg-train.json").read_text())["config"]
    assert doc["sim"] == json.loads(json.dumps(sim.to_dict()))                     # every SimConfig field
    assert (doc["n_micrographs"], doc["sim_val"], doc["data"]) == (2, 2, None)
    assert doc["simulate"] == str(cfg.resolve()) and doc["picking"]["threshold"] == pick["threshold"]
    assert len(json.loads((tmp_path / "m" / "history.json").read_text())) == 2


@pytest.mark.parametrize("fields, message", [(dict(no_such_field=1), "unknown SimConfig field(s) no_such_field"),
                                             (dict(snr=-0.1), "snr must be a positive number"),
                                             (dict(n_micrographs=0), "n_micrographs must be an integer >= 1")])
def test_bad_simulation_config_is_one_line_naming_the_file(capsys, tmp_path, fields, message):
    cfg = write_config(tmp_path / "bad.json", **TINY, **fields)
    rc, _, err = run(capsys, "train", "--simulate", cfg, "--out", tmp_path / "m", "--device", "cpu")
    assert_one_line_error(rc, err, str(cfg), message)
    assert not (tmp_path / "m" / "best.pt").exists()


def test_not_json_and_missing_config(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{shape: [64, 64]")
    rc, _, err = run(capsys, "train", "--simulate", bad, "--out", tmp_path / "m")
    assert_one_line_error(rc, err, str(bad), "not valid JSON")
    rc, _, err = run(capsys, "train", "--simulate", tmp_path / "nope.json", "--out", tmp_path / "m")
    assert_one_line_error(rc, err, "nope.json", "not found")


def test_simulate_with_data_is_refused(capsys, tmp_path):
    cfg = write_config(tmp_path / "cfg.json", **TINY)
    (tmp_path / "lab").mkdir()
    rc, _, err = run(capsys, "train", "--simulate", cfg, "--data", tmp_path / "lab", "--out", tmp_path / "m")
    assert_one_line_error(rc, err, "--data and --simulate exclude each other")
    rc, _, err = run(capsys, "train", "--out", tmp_path / "m")
    assert_one_line_error(rc, err, "give --data FOLDER or --simulate CONFIG.json")
    rc, _, err = run(capsys, "train", "--simulate", cfg, "--out", tmp_path / "m", "--sim-val", 0, "--device", "cpu")
    assert_one_line_error(rc, err, "--sim-val must be >= 1")
    assert not (tmp_path / "m" / "best.pt").exists()


def test_val_folder_at_another_pixel_size_is_refused(capsys, tmp_path):
    "A --val folder must be at the simulation's scale: one network does not learn two particle sizes."
    from cryoseg.simulate import simulate_dataset
    simulate_dataset(tmp_path / "val", 1, SimConfig(shape=(64, 64), n_particles=1, box_size=32, pixel_size_a=4.0),
                     progress=False, device="cpu")
    cfg = write_config(tmp_path / "cfg.json", **TINY)
    rc, _, err = run(capsys, "train", "--simulate", cfg, "--val", tmp_path / "val", "--out", tmp_path / "m",
                     "--device", "cpu")
    assert_one_line_error(rc, err, str(tmp_path / "val"), "pixel_size_a 4 Å/px", "the simulation")


def test_epochs_and_validation_never_share_a_micrograph():
    "Micrograph k of epoch e comes from (seed, e, k): reproducible, and disjoint from other epochs and validation."
    sim = SimConfig(shape=(64, 64), n_particles=2, box_size=32)
    ds = SimulatedDataset(sim, n_micrographs=2, crop_size=32, length=4, seed=3)
    epochs = []
    for e in range(3):
        ds.set_epoch(e)
        epochs += [im.copy() for im in ds.crops.images]
    val = [r.image for r in simulated_micrographs(sim, 2, seed=3)]
    raw = [r.image for e in range(3) for r in simulated_micrographs(sim, 2, seed=3, epoch=e)]
    assert all(not np.allclose(a, b) for i, a in enumerate(raw + val) for b in (raw + val)[i + 1:])
    ds.set_epoch(1)
    assert all(np.array_equal(a, b) for a, b in zip(ds.crops.images, epochs[2:4]))   # epoch 1 again, the same
    x, y = ds[0]
    assert (x.shape, x.dtype, y.shape, y.dtype) == ((1, 32, 32), torch.float32, (32, 32), torch.int64)

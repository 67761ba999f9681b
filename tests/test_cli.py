"""The `cryoseg` command line: help on every command, one-line errors with exit code 2, no overwrite
without --force, deterministic sharding, and a tiny end-to-end run (`cryoseg demo --quick`)."""
import json
import os
import subprocess
import sys

import pytest

from cryoseg.cli.common import config_name, parse_shard, shard_items, write_config
from cryoseg.cli.main import main

COMMANDS = [["simulate"], ["label"], ["label", "synthetic"], ["label", "cryoppp"], ["label", "reproject"],
            ["train"], ["predict"], ["pick"], ["evaluate"], ["demo"]]


def run(capsys, *argv):
    "main(argv) → (exit code, stdout, stderr); argparse's SystemExit is turned into its code."
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *contains):
    assert rc == 2, (rc, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("cryoseg ") and "error:" in lines[0], lines[0]
    assert "Traceback" not in err
    for c in contains:
        assert c in lines[0], (c, lines[0])


# --- help ------------------------------------------------------------------------------------------

def test_top_level_help(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0
    for cmd in ("simulate", "label", "train", "predict", "pick", "evaluate", "demo"):
        assert cmd in out


@pytest.mark.parametrize("cmd", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_has_help(capsys, cmd):
    rc, out, _ = run(capsys, *cmd, "--help")
    assert rc == 0
    assert out.startswith("usage: cryoseg " + " ".join(cmd))


def test_version(capsys):
    import cryoseg
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and cryoseg.__version__ in out


def test_python_dash_m():
    "`python -m cryoseg.cli` is the entry point torchrun needs."
    r = subprocess.run([sys.executable, "-m", "cryoseg.cli", "predict", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--shard" in r.stdout and "--crf" in r.stdout


def test_help_imports_no_stage_module():
    "`cryoseg pick --help` answers without importing torch, matplotlib, numpy or any stage module."
    code = ("import sys\nfrom cryoseg.cli.main import main\ntry:\n    main(['pick', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'matplotlib', 'numpy', 'pandas', 'cryoseg.io', 'cryoseg.pick') if m in sys.modules]\n"
            "print('HEAVY', ','.join(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("HEAVY"), r.stdout[-300:]


@pytest.mark.parametrize("old, new", [(["label", "cryoppp", "--bin", "2"], ["label", "cryoppp", "--bin-factor", "2"]),
                                      (["train", "--init", "a.pt"], ["train", "--init-checkpoint", "a.pt"]),
                                      (["demo", "--labels", "disc"], ["demo", "--kind", "disc"])])
def test_one_spelling_per_idea_old_flags_still_work(old, new):
    "Flags are spelled like the library's names; the older spellings remain as aliases."
    from cryoseg.cli.main import make_parser
    req = dict(label=["--data", "d", "--out", "o"], train=["--data", "d", "--out", "o"], demo=[])
    extra = req[old[0]]
    a, b = make_parser().parse_args(old + extra), make_parser().parse_args(new + extra)
    assert vars(a) == vars(b)


def test_missing_command_is_usage_error(capsys):
    rc, _, err = run(capsys)
    assert rc == 2 and "usage:" in err


# --- one-line errors ---------------------------------------------------------------------------------

def test_missing_input_folder(capsys, tmp_path):
    rc, _, err = run(capsys, "predict", "--model", tmp_path / "m.pt", "--data", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "nowhere", "no such file")


def test_empty_input_folder(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    rc, _, err = run(capsys, "pick", "--probs", tmp_path / "empty", "--out", tmp_path / "o", "--diameter-px", 20)
    assert_one_line_error(rc, err, "no micrographs")


def test_missing_checkpoint(capsys, tmp_path):
    (tmp_path / "mics").mkdir()
    (tmp_path / "mics" / "a.mrc").write_bytes(b"")
    rc, _, err = run(capsys, "predict", "--model", tmp_path / "m.pt", "--data", tmp_path / "mics", "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "m.pt", "checkpoint not found")


@pytest.mark.parametrize("shard", ["2/2", "-1/3", "1", "a/b", "0/0"])
def test_bad_shard(capsys, tmp_path, shard):
    rc, _, err = run(capsys, "pick", "--probs", tmp_path, "--out", tmp_path / "o", "--diameter-px", 20, f"--shard={shard}")
    assert_one_line_error(rc, err, "--shard")


def test_bad_diameter(capsys, tmp_path):
    rc, _, err = run(capsys, "pick", "--probs", tmp_path, "--out", tmp_path / "o", "--diameter-px", -3)
    assert_one_line_error(rc, err, "--diameter-px must be > 0")


def test_bad_format(capsys, tmp_path):
    rc, _, err = run(capsys, "pick", "--probs", tmp_path, "--out", tmp_path / "o", "--diameter-px", 20, "--formats", "star,pdf")
    assert_one_line_error(rc, err, "--formats")


def test_bad_set_syntax(capsys, tmp_path):
    rc, _, err = run(capsys, "simulate", "--out", tmp_path / "s", "--set", "snr")
    assert_one_line_error(rc, err, "field=value")


def test_unknown_config_field(capsys, tmp_path):
    pytest.importorskip("cryoseg.simulate")
    rc, _, err = run(capsys, "simulate", "--out", tmp_path / "s", "--set", "no_such_field=3")
    assert_one_line_error(rc, err, "unknown SimConfig field", "no_such_field")


def test_bad_config_file(capsys, tmp_path):
    pytest.importorskip("cryoseg.simulate")
    (tmp_path / "c.json").write_text("{not json")
    rc, _, err = run(capsys, "simulate", "--out", tmp_path / "s", "--config", tmp_path / "c.json")
    assert_one_line_error(rc, err, "c.json", "not valid JSON")


def test_evaluate_missing_truth(capsys, tmp_path):
    (tmp_path / "picks").mkdir()
    rc, _, err = run(capsys, "evaluate", "--picks", tmp_path / "picks", "--truth", tmp_path / "nope", "--diameter-px", 20)
    assert_one_line_error(rc, err, "nope")


def test_debug_shows_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["pick", "--probs", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--diameter-px", "20", "--debug"])


def test_argparse_errors_exit_2(capsys):
    rc, _, err = run(capsys, "predict", "--crf", "quantum", "--model", "m", "--data", "d", "--out", "o")
    assert rc == 2 and "invalid choice" in err


# --- sharding and configs ----------------------------------------------------------------------------

def test_shards_partition_the_micrographs():
    names = [f"mic_{i:05d}.mrc" for i in range(1000)]
    n = 7
    parts = [shard_items(names, f"{i}/{n}") for i in range(n)]
    assert sorted(sum(parts, [])) == sorted(names)
    assert len(set(sum(parts, []))) == len(names)
    assert max(map(len, parts)) - min(map(len, parts)) < 60          # balanced within noise
    assert shard_items(list(reversed(names)), f"3/{n}") == parts[3]  # independent of listing order
    assert shard_items(names[:10], f"3/{n}") == [p for p in parts[3] if p in names[:10]]  # and of other files
    assert parse_shard("0/1") == (0, 1)


def test_config_not_overwritten_without_force(tmp_path):
    p = write_config(tmp_path, "pick", dict(a=1))
    assert p.name == config_name("pick") == "cryoseg-pick.json"
    with pytest.raises(FileExistsError, match="--force"):
        write_config(tmp_path, "pick", dict(a=2))
    write_config(tmp_path, "pick", dict(a=2), force=True)
    doc = json.loads(p.read_text())
    assert doc["config"] == dict(a=2) and doc["command"] == "pick" and "machine" in doc


# --- pick and evaluate on known probability maps ---------------------------------------------------

def _prob_maps(root, n=4, size=96, diameter=12, seed=0):
    "Probability maps = disc labels at random, well separated centres; the true coordinates as STAR files."
    import numpy as np
    from cryoseg.coords import write_particles
    from cryoseg.io import write_micrograph
    from cryoseg.particles import make_particles
    from cryoseg.labels import disc_labels
    rng = np.random.default_rng(seed)
    for k in range(n):
        xy = []
        while len(xy) < 5:
            c = rng.uniform(diameter, size - diameter, 2)
            if all(np.hypot(*(c - q)) > 2 * diameter for q in xy):
                xy.append(c)
        xy = np.array(xy)
        t = make_particles(xy[:, 0], xy[:, 1], micrograph=f"mic_{k:04d}.mrc", diameter_px=diameter)
        sem, _ = disc_labels((size, size), t, diameter_px=diameter)
        write_micrograph(root / "probs" / f"mic_{k:04d}.mrc", sem.astype("float32"))
        write_particles(root / "truth" / f"mic_{k:04d}.star", t)
    return root


def test_pick_then_evaluate(capsys, tmp_path):
    _prob_maps(tmp_path)
    rc, _, err = run(capsys, "pick", "--probs", tmp_path / "probs", "--out", tmp_path / "picks", "--diameter-px", 12,
                     "--formats", "star,box,csv,txt", "--quiet")
    assert rc == 0, err
    for f in ("star", "box", "csv", "txt"):
        assert len(list((tmp_path / "picks" / f).glob(f"*.{f}"))) == 4
    assert (tmp_path / "picks" / "particles.star").exists()
    assert (tmp_path / "picks" / "cryoseg-pick.json").exists()
    rc, out, err = run(capsys, "evaluate", "--picks", tmp_path / "picks" / "star", "--truth", tmp_path / "truth",
                       "--diameter-px", 12, "--out", tmp_path / "eval", "--probs", tmp_path / "probs",
                       "--masks", tmp_path / "probs")
    assert rc == 0, err
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["picking"]["f1"] == 1.0 and m["picking"]["n_true"] == 20
    assert m["pixel"]["iou"] == 1.0
    assert json.loads(out)["picking"]["recall"] == 1.0
    # the same picks as BOX files (corner convention) evaluate the same
    rc, out, err = run(capsys, "evaluate", "--picks", tmp_path / "picks" / "box", "--truth", tmp_path / "truth",
                       "--diameter-px", 12)
    assert rc == 0 and json.loads(out)["picking"]["f1"] == 1.0, err


def test_pick_refuses_to_overwrite(capsys, tmp_path):
    _prob_maps(tmp_path, n=2)
    args = ("pick", "--probs", tmp_path / "probs", "--out", tmp_path / "picks", "--diameter-px", 12, "--quiet")
    assert run(capsys, *args)[0] == 0
    before = (tmp_path / "picks" / "star" / "mic_0000.star").read_text()
    rc, _, err = run(capsys, *args)
    assert_one_line_error(rc, err, "exists", "--force")
    assert (tmp_path / "picks" / "star" / "mic_0000.star").read_text() == before
    rc, _, err = run(capsys, *args, "--force")
    assert rc == 0, err


def test_pick_shards_cover_all(capsys, tmp_path):
    _prob_maps(tmp_path, n=6)
    for i in range(3):
        rc, _, err = run(capsys, "pick", "--probs", tmp_path / "probs", "--out", tmp_path / "picks", "--diameter-px", 12,
                         "--shard", f"{i}/3", "--quiet")
        assert rc == 0, err
        assert (tmp_path / "picks" / f"cryoseg-pick.shard-{i}-of-3.json").exists()
    got = sorted(p.name for p in (tmp_path / "picks" / "star").glob("*.star"))
    assert got == [f"mic_{k:04d}.star" for k in range(6)]
    per_shard = [json.loads((tmp_path / "picks" / f"cryoseg-pick.shard-{i}-of-3.json").read_text())["config"]["n_micrographs"]
                 for i in range(3)]
    assert sum(per_shard) == 6


def test_evaluate_mismatched_names(capsys, tmp_path):
    _prob_maps(tmp_path, n=2)
    run(capsys, "pick", "--probs", tmp_path / "probs", "--out", tmp_path / "picks", "--diameter-px", 12, "--quiet")
    (tmp_path / "other").mkdir()
    for p in (tmp_path / "truth").glob("*.star"):
        (tmp_path / "other" / ("x" + p.name)).write_text(p.read_text())
    rc, _, err = run(capsys, "evaluate", "--picks", tmp_path / "picks" / "star", "--truth", tmp_path / "other",
                     "--diameter-px", 12)
    assert_one_line_error(rc, err, "no micrograph names in common")


# --- the whole pipeline, tiny ----------------------------------------------------------------------

def test_demo_quick(capsys, tmp_path):
    "`cryoseg demo --quick`: every stage runs and writes its documented outputs (numbers not judged: 2 epochs)."
    out = tmp_path / "demo"
    rc, _, err = run(capsys, "demo", "--quick", "--out", out, "--quiet", "--device", "cpu")
    assert rc == 0, err
    report = (out / "report.md").read_text()
    for row in ("| U-Net |", "| U-Net + CRF (torch) |", "| blob picker (LoG) |", "## Timings", "## Machine"):
        assert row in report, row
    for f in ("picks.png", "crf.png", "pr.png", "history.png"):
        assert (out / "figures" / f).stat().st_size > 1000, f
    test_mics = sorted(p.stem for p in (out / "data" / "test" / "micrographs").glob("*.mrc"))
    for method in ("unet", "unet_crf"):
        assert sorted(p.stem for p in (out / "picks" / method / "star").glob("*.star")) == test_mics
        assert sorted(p.stem for p in (out / "picks" / method / "box").glob("*.box")) == test_mics
    for cfg in ("data/train/cryoseg-simulate.json", "labels/train/cryoseg-label-footprint.json", "model/cryoseg-train.json",
                "predict/cryoseg-predict.json", "picks/unet/cryoseg-pick.json", "cryoseg-demo.json"):
        assert (out / cfg).exists(), cfg
    m = json.loads((out / "metrics.json").read_text())
    for name, r in m["results"].items():
        assert 0 <= r["picking"]["f1"] <= 1, name
    # a second run into the same folder refuses, naming a file, and leaves the report alone
    rc, _, err = run(capsys, "demo", "--quick", "--out", out, "--quiet")
    assert_one_line_error(rc, err, "exists", "--force")
    assert (out / "report.md").read_text() == report


# --- labels ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    "A tiny simulated dataset made through the CLI."
    root = tmp_path_factory.mktemp("sim") / "sim"
    rc = main(["simulate", "--out", str(root), "--n-micrographs", "2", "--set", "shape=[128, 128]",
               "--set", "n_particles=4", "--quiet", "--seed", "3"])
    assert rc == 0
    return root


def test_simulate_layout_and_config(sim):
    for d in ("micrographs", "coordinates", "masks", "instances", "junk"):
        assert len(list((sim / d).iterdir())) == 2, d
    doc = json.loads((sim / "cryoseg-simulate.json").read_text())
    assert doc["config"]["sim"]["shape"] == [128, 128] and doc["config"]["seed"] == 3
    assert json.loads((sim / "simulation.json").read_text())["seed"] == 3


def test_simulate_refuses_existing(capsys, sim):
    rc, _, err = run(capsys, "simulate", "--out", sim, "--n-micrographs", "1")
    assert_one_line_error(rc, err, "exists")


def test_label_synthetic_disc_and_footprint(capsys, sim, tmp_path):
    import numpy as np
    from cryoseg.io import read_mask
    from cryoseg.metrics import pixel_metrics
    for kind in ("disc", "footprint"):
        rc, _, err = run(capsys, "label", "synthetic", "--data", sim, "--out", tmp_path / kind, "--kind", kind, "--quiet")
        assert rc == 0, err
        assert sorted(p.name for p in (tmp_path / kind / "micrographs").iterdir()) == ["mic_0000.mrc", "mic_0001.mrc"]
    exact = [read_mask(sim / "masks" / f"mic_000{i}.mrc") for i in range(2)]
    foot = [read_mask(tmp_path / "footprint" / "masks" / f"mic_000{i}.mrc") for i in range(2)]
    disc = [read_mask(tmp_path / "disc" / "masks" / f"mic_000{i}.mrc") for i in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(exact, foot))          # the simulator's own masks
    iou = pixel_metrics(disc, exact)["iou"]
    assert 0.3 < iou < 1.0, iou                                             # discs overlap footprints, not equal


def test_label_reproject_matches_footprints(capsys, sim, tmp_path):
    "Reprojecting the simulator's volume at the true poses reproduces its exact masks."
    import mrcfile
    import numpy as np
    from cryoseg.simulate import SimConfig
    from cryoseg.volumes import make_volume
    from cryoseg.io import read_mask
    from cryoseg.metrics import pixel_metrics
    c = SimConfig()
    vol = make_volume(c.volume_kind, c.box_size, c.pixel_size_a, c.diameter_a, c.volume_seed)
    with mrcfile.new(tmp_path / "vol.mrc") as m:
        m.set_data(vol.astype(np.float32)); m.voxel_size = c.pixel_size_a
    rc, _, err = run(capsys, "label", "reproject", "--data", sim, "--volume", tmp_path / "vol.mrc", "--out", tmp_path / "rp",
                     "--threshold-frac", c.footprint_threshold_frac, "--quiet")
    assert rc == 0, err
    rp = [read_mask(tmp_path / "rp" / "masks" / f"mic_000{i}.mrc") for i in range(2)]
    exact = [read_mask(sim / "masks" / f"mic_000{i}.mrc") for i in range(2)]
    assert pixel_metrics(rp, exact)["iou"] > 0.9


def test_label_cryoppp_sample(capsys, tmp_path):
    from cryoseg.datasets import make_cryoppp_sample
    from cryoseg.io import read_micrograph, read_mask
    root = make_cryoppp_sample(tmp_path / "ppp", n_micrographs=2, seed=0)
    rc, _, err = run(capsys, "label", "cryoppp", "--data", root, "--out", tmp_path / "lab", "--bin", 2, "--quiet")
    assert rc == 0, err
    names = sorted(p.stem for p in (root / "micrographs").glob("*.mrc"))
    for n in names:
        img, _ = read_micrograph(root / "micrographs" / f"{n}.mrc")
        small, _ = read_micrograph(tmp_path / "lab" / "micrographs" / f"{n}.mrc")
        assert small.shape == (img.shape[0] // 2, img.shape[1] // 2)
        m = read_mask(tmp_path / "lab" / "masks" / f"{n}.mrc")
        assert m.shape == small.shape and 0 < m.mean() < 0.5
    rc, _, err = run(capsys, "label", "cryoppp", "--data", tmp_path / "nope", "--out", tmp_path / "lab2")
    assert_one_line_error(rc, err, "nope")


def test_train_under_torchrun_two_cpu_processes(sim, tmp_path):
    "`torchrun --nproc_per_node 2 -m cryoseg.cli train ...` trains with DDP (gloo on CPU); rank 0 writes."
    import shutil as sh
    torchrun = sh.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not on PATH")
    lab = tmp_path / "lab"
    assert main(["label", "synthetic", "--data", str(sim), "--out", str(lab), "--kind", "footprint", "--quiet"]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", "-m", "cryoseg.cli", "train",
                        "--data", str(lab), "--out", str(tmp_path / "model"), "--device", "cpu", "--epochs", "1",
                        "--set", "samples_per_epoch=8", "--set", "crop_size=32", "--set", "batch_size=2",
                        "--set", 'model_kwargs={"depth": 2, "width": 4}', "--quiet"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "model" / "best.pt").exists()
    doc = json.loads((tmp_path / "model" / "cryoseg-train.json").read_text())
    assert doc["config"]["train"]["epochs"] == 1


def test_train_init_fine_tunes(capsys, sim, tmp_path):
    "`train --init CKPT` starts from another run's weights and records it; a missing CKPT is a one-line error."
    lab = tmp_path / "lab"
    assert main(["label", "synthetic", "--data", str(sim), "--out", str(lab), "--kind", "footprint", "--quiet"]) == 0
    tiny = ["--device", "cpu", "--epochs", "1", "--set", "samples_per_epoch=8", "--set", "crop_size=32",
            "--set", "batch_size=2", "--set", 'model_kwargs={"depth": 2, "width": 4}', "--quiet"]
    rc, _, err = run(capsys, "train", "--data", lab, "--out", tmp_path / "pre", *tiny)
    assert rc == 0, err
    init = tmp_path / "pre" / "best.pt"
    rc, _, err = run(capsys, "train", "--data", lab, "--out", tmp_path / "ft", "--init", init, *tiny)
    assert rc == 0, err
    doc = json.loads((tmp_path / "ft" / "cryoseg-train.json").read_text())
    assert doc["config"]["train"]["init_checkpoint"] == str(init)
    assert doc["argv"][doc["argv"].index("--init") + 1] == str(init)
    import torch
    assert torch.load(tmp_path / "ft" / "last.pt", weights_only=True)["cfg"]["init_checkpoint"] == str(init)
    rc, _, err = run(capsys, "train", "--data", lab, "--out", tmp_path / "ft2", "--init", tmp_path / "nope.pt", *tiny)
    assert_one_line_error(rc, err, "nope.pt", "--init checkpoint not found")
    assert not (tmp_path / "ft2").exists()

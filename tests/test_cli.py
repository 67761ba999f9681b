"""The `cryoseg` command line: help on every command, one-line errors with exit code 2, no overwrite
without --force, deterministic sharding, and a tiny end-to-end run (`cryoseg demo --quick`); and never
losing a user's work (issue 15): atomic outputs, outputs that are never inputs, one writer per folder,
folder runs that go on past a bad file and resume, failed writes that name their path, options checked."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from cryoseg.cli.common import config_name, output_lock, parse_shard, shard_items, write_config
from cryoseg.cli.main import main
from cli_helpers import assert_one_line_error, run

COMMANDS = [["simulate"], ["label"], ["label", "synthetic"], ["label", "cryoppp"], ["label", "reproject"],
            ["train"], ["predict"], ["pick"], ["evaluate"], ["demo"]]


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


@pytest.mark.parametrize("d", ["-3", "0", "0.001", "1.5", "nan", "inf"])
def test_bad_diameter(capsys, tmp_path, d):
    "A diameter that cannot describe a particle (below 2 px, NaN, infinite) is refused, saying what would do."
    rc, _, err = run(capsys, "pick", "--probs", tmp_path, "--out", tmp_path / "o", f"--diameter-px={d}")
    assert_one_line_error(rc, err, "--diameter-px must be a finite number of pixels >= 2")


@pytest.mark.parametrize("t", ["nan", "2", "-1", "0", "1"])
def test_bad_threshold(capsys, tmp_path, t):
    rc, _, err = run(capsys, "pick", "--probs", tmp_path, "--out", tmp_path / "o", "--diameter-px", 20, f"--threshold={t}")
    assert_one_line_error(rc, err, "--threshold must be a probability strictly between 0 and 1")


@pytest.mark.parametrize("b", ["0", "-4", "1"])
def test_bad_box_size(capsys, tmp_path, b):
    rc, _, err = run(capsys, "pick", "--probs", tmp_path, "--out", tmp_path / "o", "--diameter-px", 20, f"--box-size-px={b}")
    assert_one_line_error(rc, err, "--box-size-px must be a whole number of pixels >= 2")


def test_bad_format(capsys, tmp_path):
    rc, _, err = run(capsys, "pick", "--probs", tmp_path, "--out", tmp_path / "o", "--diameter-px", 20, "--formats", "star,pdf")
    assert_one_line_error(rc, err, "--formats")


def test_bad_set_syntax(capsys, tmp_path):
    rc, _, err = run(capsys, "simulate", "--out", tmp_path / "s", "--set", "snr")
    assert_one_line_error(rc, err, "field=value")


def test_unknown_config_field(capsys, tmp_path):
    rc, _, err = run(capsys, "simulate", "--out", tmp_path / "s", "--set", "no_such_field=3")
    assert_one_line_error(rc, err, "unknown SimConfig field", "no_such_field")


def test_bad_config_file(capsys, tmp_path):
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
    assert m["picking"]["f1_interval"] == [1.0, 1.0] and m["picking"]["interval_micrographs"] == 4   # all perfect
    # the same picks as BOX files (corner convention) evaluate the same
    rc, out, err = run(capsys, "evaluate", "--picks", tmp_path / "picks" / "box", "--truth", tmp_path / "truth",
                       "--diameter-px", 12)
    assert rc == 0 and json.loads(out)["picking"]["f1"] == 1.0, err


def test_pick_rerun_resumes_other_settings_refused(capsys, tmp_path):
    "A rerun with the same settings keeps what is complete; other settings are refused; --force redoes all."
    _prob_maps(tmp_path, n=2)
    args = ("pick", "--probs", tmp_path / "probs", "--out", tmp_path / "picks", "--diameter-px", 12, "--quiet")
    assert run(capsys, *args)[0] == 0
    star = tmp_path / "picks" / "star" / "mic_0000.star"
    before, t0 = star.read_text(), star.stat().st_mtime_ns
    rc, _, err = run(capsys, *args)
    assert rc == 0, err
    assert star.stat().st_mtime_ns == t0                      # kept, not redone
    rc, _, err = run(capsys, *args, "--threshold", "0.7")
    assert_one_line_error(rc, err, "other settings (threshold: None then, 0.7 now)", "--force")
    assert star.read_text() == before and star.stat().st_mtime_ns == t0
    rc, _, err = run(capsys, *args, "--force")
    assert rc == 0, err
    assert star.stat().st_mtime_ns != t0 and star.read_text() == before
    # a folder of pick files someone else made: not this run's, refused before any work
    (tmp_path / "theirs" / "star").mkdir(parents=True)
    (tmp_path / "theirs" / "star" / "mic_0000.star").write_text("mine")
    rc, _, err = run(capsys, "pick", "--probs", tmp_path / "probs", "--out", tmp_path / "theirs", "--diameter-px", 12)
    assert_one_line_error(rc, err, "mic_0000.star exists", "--force")
    assert (tmp_path / "theirs" / "star" / "mic_0000.star").read_text() == "mine"


def test_pick_shards_cover_all(capsys, tmp_path):
    _prob_maps(tmp_path, n=6)
    for i in range(3):
        rc, _, err = run(capsys, "pick", "--probs", tmp_path / "probs", "--out", tmp_path / "picks", "--diameter-px", 12,
                         "--shard", f"{i}/3", "--quiet")
        assert rc == 0, err
        assert (tmp_path / "picks" / f"cryoseg-pick.shard-{i}-of-3.json").exists()
    got = sorted(p.name for p in (tmp_path / "picks" / "star").glob("*.star"))
    assert got == [f"mic_{k:04d}.star" for k in range(6)]
    per_shard = [json.loads((tmp_path / "picks" / f"cryoseg-pick.shard-{i}-of-3.json").read_text())["results"]["n_micrographs"]
                 for i in range(3)]
    assert sum(per_shard) == 6


def test_evaluate_bad_bootstrap(capsys, tmp_path):
    (tmp_path / "picks").mkdir(); (tmp_path / "truth").mkdir()
    rc, _, err = run(capsys, "evaluate", "--picks", tmp_path / "picks", "--truth", tmp_path / "truth",
                     "--diameter-px", 12, "--bootstrap", -5)
    assert_one_line_error(rc, err, "--bootstrap must be a whole number >= 0")


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
    # the report's scores are those of its counts, and its truth is the test set's coordinate files
    from cryoseg.coords import read_particles
    from cryoseg.metrics import picking_scores
    n_true = sum(len(read_particles(f)) for f in (out / "data" / "test" / "coordinates").glob("*.star"))
    for name, r in m["results"].items():
        pk = r["picking"]
        assert pk["n_true"] == n_true > 0, (name, pk["n_true"], n_true)
        want = picking_scores(pk["n_matched"], pk["n_picks"], pk["n_true"], pk.get("n_correct_picks"))
        assert all(abs(pk[k] - want[k]) < 1e-9 for k in ("precision", "recall", "f1")), (name, pk, want)
    # a second run into the same folder refuses, naming a file, and leaves the report alone
    rc, _, err = run(capsys, "demo", "--quick", "--out", out, "--quiet")
    assert_one_line_error(rc, err, "exists", "--force")
    assert (out / "report.md").read_text() == report
    # --force replaces the demo's own files only: the user's files in data/, model/, figures/ survive
    mine = {out / "data" / "notes.txt": "my notes", out / "model" / "my_model.pt": "weights",
            out / "figures" / "mine.png": "png", out / "data" / "test" / "micrographs" / "extra.txt": "x"}
    for p, text in mine.items():
        p.write_text(text)
    rc, _, err = run(capsys, "demo", "--quick", "--out", out, "--quiet", "--device", "cpu", "--force")
    assert rc == 0, err
    for p, text in mine.items():
        assert p.read_text() == text, p
    assert (out / "report.md").exists() and (out / "figures" / "pr.png").exists()
    assert not list(out.rglob(".cryoseg*.lock"))             # every lock released


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


# --- never lose a user's work (issue 15) -------------------------------------------------------------

def _graded_maps(root, n=4, size=96, seed=0):
    """Probability maps with 3 strong (0.9) and 2 weak (0.5) discs each: `--threshold 0.3` picks 5 per map,
    `--threshold 0.7` picks 3, so the per-micrograph files tell which run wrote them."""
    import numpy as np
    from cryoseg.io import write_micrograph
    from cryoseg.labels import disc_labels
    from cryoseg.particles import make_particles
    rng = np.random.default_rng(seed)
    for k in range(n):
        xy = []
        while len(xy) < 5:
            c = rng.uniform(12, size - 12, 2)
            if all(np.hypot(*(c - q)) > 26 for q in xy):
                xy.append(c)
        prob = np.zeros((size, size), np.float32)
        for j, (x, y) in enumerate(xy):
            disc = disc_labels((size, size), make_particles([x], [y], diameter_px=12), diameter_px=12)[0]
            prob = np.maximum(prob, disc * (0.9 if j < 3 else 0.5))
        write_micrograph(root / "probs" / f"mic_{k:04d}.mrc", prob)
    return root / "probs"


def _tree(folder):
    "Every regular file under `folder` (hidden names aside) and its bytes."
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def _per_micrograph(out, fmt="star"):
    return {k: v for k, v in _tree(out).items() if k.startswith(f"{fmt}/")}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    "A U-Net (depth 2, width 4) trained for one epoch on noise, and four 64² micrographs."
    from cryoseg.testing import tiny_model as make
    return make(tmp_path_factory.mktemp("tiny"), n=4)


# 1. demo --force: see test_demo_quick (the user's files in data/, model/, figures/ survive)

# 2. atomic outputs

def test_evaluate_full_disk_leaves_no_partial_table(capsys, tmp_path, monkeypatch):
    "A full disk while writing per_micrograph.csv leaves no half table, names the file, and the rerun works."
    import pandas as pd
    _prob_maps(tmp_path, n=2)
    run(capsys, "pick", "--probs", tmp_path / "probs", "--out", tmp_path / "picks", "--diameter-px", 12, "--quiet")
    real = pd.DataFrame.to_csv

    def full(self, path, *a, **kw):
        with open(path, "w") as f:
            f.write("micrograph,n_picks,n_true\nmic_0000,5,")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    args = ("evaluate", "--picks", tmp_path / "picks" / "star", "--truth", tmp_path / "truth", "--diameter-px", 12,
            "--out", tmp_path / "eval")
    rc, _, err = run(capsys, *args)
    assert_one_line_error(rc, err, str(tmp_path / "eval" / "per_micrograph.csv"), "No space left on device")
    assert not (tmp_path / "eval" / "per_micrograph.csv").exists()
    assert not [p for p in (tmp_path / "eval").iterdir() if p.name.startswith(".")]   # no temporary file left
    monkeypatch.setattr(pd.DataFrame, "to_csv", real)
    rc, out, err = run(capsys, *args)                     # the rerun is not refused
    assert rc == 0, err
    assert pd.read_csv(tmp_path / "eval" / "per_micrograph.csv")["micrograph"].tolist()[:2] == ["mic_0000", "mic_0001"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["picking"]["f1"] == 1.0


def test_file_size_limit_is_one_line_and_resumable(tmp_path):
    "A real failed write (RLIMIT_FSIZE, EFBIG) in a subprocess: one line naming the path, no partial file, rerun completes."
    probs = _graded_maps(tmp_path)
    code = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))
        from cryoseg.cli.main import main
        sys.exit(main(["pick", "--probs", {str(probs)!r}, "--out", {str(tmp_path / "picks")!r}, "--diameter-px", "12",
                       "--threshold", "0.3", "--quiet"]))""")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert str(tmp_path / "picks") in lines[0] and "File too large" in lines[0] and "[Errno" not in lines[0], lines[0]
    for p in (tmp_path / "picks").rglob("*.star"):       # nothing partial under a final name
        from cryoseg.coords import read_particles
        read_particles(p, allow_empty=True)
    rc = main(["pick", "--probs", str(probs), "--out", str(tmp_path / "picks"), "--diameter-px", "12", "--threshold", "0.3",
               "--quiet"])
    assert rc == 0
    assert len(list((tmp_path / "picks" / "star").glob("*.star"))) == 4


# 3. an output folder is never an input folder

def test_label_cryoppp_into_its_input_is_refused(capsys, tmp_path):
    "`label cryoppp --data X --out X --bin 2 --force` used to replace the user's micrographs with binned copies."
    from cryoseg.datasets import make_cryoppp_sample
    root = make_cryoppp_sample(tmp_path / "ppp", n_micrographs=1, seed=0)
    before = _tree(root)
    rc, _, err = run(capsys, "label", "cryoppp", "--data", root, "--out", root, "--bin", 2, "--force", "--quiet")
    assert_one_line_error(rc, err, "is the input")
    assert _tree(root) == before
    rc, _, err = run(capsys, "label", "cryoppp", "--data", root, "--out", root / "micrographs", "--bin", 2, "--force")
    assert_one_line_error(rc, err, "the input is read from")
    assert _tree(root) == before


@pytest.mark.parametrize("case", ["predict-same", "predict-micrographs", "pick-holds", "label-synthetic", "evaluate"])
def test_out_may_not_be_an_input(capsys, tmp_path, sim, case):
    _prob_maps(tmp_path, n=1)
    (tmp_path / "m.pt").write_bytes(b"x")
    argv = {"predict-same": ["predict", "--model", tmp_path / "m.pt", "--data", sim, "--out", sim],
            "predict-micrographs": ["predict", "--model", tmp_path / "m.pt", "--data", sim, "--out", sim / "micrographs"],
            "pick-holds": ["pick", "--probs", tmp_path / "probs", "--out", tmp_path, "--diameter-px", 12],
            "label-synthetic": ["label", "synthetic", "--data", sim, "--out", sim, "--force"],
            "evaluate": ["evaluate", "--picks", tmp_path / "truth", "--truth", tmp_path / "truth", "--diameter-px", 12,
                         "--out", tmp_path / "truth"]}[case]
    before = _tree(sim)
    rc, _, err = run(capsys, *argv)
    assert_one_line_error(rc, err, "--out", "choose an output folder outside the inputs")
    assert _tree(sim) == before


# 4. folder runs: every readable file, failures listed, resume

def test_pick_nan_map_named_others_done_then_resume(capsys, tmp_path):
    import numpy as np
    from cryoseg.io import write_micrograph
    probs = _graded_maps(tmp_path, n=3)
    good = {p.name: p.read_bytes() for p in probs.iterdir()}
    bad = np.zeros((96, 96), np.float32)
    bad[10, 10] = np.nan
    write_micrograph(probs / "mic_0001.mrc", bad, overwrite=True)
    args = ("pick", "--probs", probs, "--out", tmp_path / "picks", "--diameter-px", 12, "--quiet")
    rc, _, err = run(capsys, *args)
    assert rc == 1, err
    assert "mic_0001.mrc: 1 NaN or infinite value(s)" in err and "1 of 3 input(s) failed" in err, err
    fails = (tmp_path / "picks" / "failures.tsv").read_text().splitlines()
    assert fails[0] == "micrograph\tpath\treason" and len(fails) == 2 and fails[1].startswith("mic_0001\t"), fails
    assert sorted(p.name for p in (tmp_path / "picks" / "star").iterdir()) == ["mic_0000.star", "mic_0002.star"]
    t0 = (tmp_path / "picks" / "star" / "mic_0000.star").stat().st_mtime_ns
    (probs / "mic_0001.mrc").write_bytes(good["mic_0001.mrc"])     # the user repairs the map and reruns
    rc, _, err = run(capsys, *args)
    assert rc == 0, err
    assert (tmp_path / "picks" / "star" / "mic_0000.star").stat().st_mtime_ns == t0   # kept
    assert not (tmp_path / "picks" / "failures.tsv").exists()
    rc, _, err = run(capsys, "pick", "--probs", probs, "--out", tmp_path / "fresh", "--diameter-px", 12, "--quiet")
    assert rc == 0, err
    assert _per_micrograph(tmp_path / "picks") == _per_micrograph(tmp_path / "fresh")
    assert _tree(tmp_path / "picks")["particles.star"] == _tree(tmp_path / "fresh")["particles.star"]


def test_predict_unreadable_micrograph_others_done(capsys, tmp_path, tiny_model):
    "One unreadable micrograph no longer stops predict: the others are done, the rerun does only what is missing."
    import shutil
    model, mics = tiny_model
    data = tmp_path / "mics"
    shutil.copytree(mics, data)
    (data / "m1b.mrc").write_bytes(b"not an MRC file at all")
    args = ("predict", "--model", model, "--data", data, "--out", tmp_path / "pred", "--tile-size", 64, "--overlap", 8,
            "--device", "cpu", "--quiet")
    rc, _, err = run(capsys, *args)
    assert rc == 1, err
    assert "m1b.mrc" in err and "1 of 5 input(s) failed" in err, err
    done = sorted(p.name for p in (tmp_path / "pred" / "probabilities").glob("*.mrc"))
    assert done == ["m0.mrc", "m1.mrc", "m2.mrc", "m3.mrc"]
    assert sorted(p.stem for p in (tmp_path / "pred" / "probabilities").glob("*.json")) == ["m0", "m1", "m2", "m3"]
    t0 = (tmp_path / "pred" / "probabilities" / "m0.mrc").stat().st_mtime_ns
    (data / "m1b.mrc").unlink()
    rc, _, err = run(capsys, *args)
    assert rc == 0, err
    assert (tmp_path / "pred" / "probabilities" / "m0.mrc").stat().st_mtime_ns == t0
    assert json.loads((tmp_path / "pred" / "cryoseg-predict.json").read_text())["results"]["n_skipped"] == 4


def test_pick_killed_with_sigkill_loses_nothing(tmp_path):
    "kill -9 in the middle of a folder run (after 2 of 4 maps): no partial file; the rerun takes over the lock and completes."
    probs = _graded_maps(tmp_path)
    code = textwrap.dedent(f"""
        import os, signal, sys
        import cryoseg.pick
        real, calls = cryoseg.pick.pick_particles, []
        def dying(*a, **kw):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **kw)
        cryoseg.pick.pick_particles = dying
        from cryoseg.cli.main import main
        sys.exit(main(["pick", "--probs", {str(probs)!r}, "--out", {str(tmp_path / "picks")!r}, "--diameter-px", "12",
                       "--formats", "star,box,csv", "--quiet"]))""")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert (tmp_path / "picks" / ".cryoseg.lock").exists()        # left behind by the dead run
    assert len(list((tmp_path / "picks" / "star").glob("*.star"))) == 2
    rerun = subprocess.run([sys.executable, "-m", "cryoseg.cli", "pick", "--probs", str(probs), "--out",
                            str(tmp_path / "picks"), "--diameter-px", "12", "--formats", "star,box,csv"],
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "taking over the lock of a run that is no longer running" in rerun.stderr
    assert "2 input(s) already done" in rerun.stderr
    assert main(["pick", "--probs", str(probs), "--out", str(tmp_path / "fresh"), "--diameter-px", "12",
                 "--formats", "star,box,csv", "--quiet"]) == 0
    a, b = _tree(tmp_path / "picks"), _tree(tmp_path / "fresh")
    assert {k: v for k, v in a.items() if not k.startswith("cryoseg-")} == {k: v for k, v in b.items() if not k.startswith("cryoseg-")}


def test_folder_commands_document_resume(capsys):
    for cmd in (["pick"], ["predict"], ["label", "synthetic"], ["label", "cryoppp"], ["label", "reproject"]):
        rc, out, _ = run(capsys, *cmd, "--help")
        flat = " ".join(out.split())
        assert rc == 0 and "failures.tsv" in flat and "(default: resume)" in flat and "--force redoes" in flat, cmd


# 5. one writer per output folder

def test_second_writer_is_refused(capsys, tmp_path):
    _prob_maps(tmp_path, n=2)
    with output_lock(tmp_path / "picks", "pick", argv=["cryoseg", "pick", "--threshold", "0.3"]):
        rc, _, err = run(capsys, "pick", "--probs", tmp_path / "probs", "--out", tmp_path / "picks", "--diameter-px", 12,
                         "--force")
        assert_one_line_error(rc, err, f"{tmp_path / 'picks'}: another cryoseg run is writing into this folder",
                              f"pid {os.getpid()} on", "cryoseg pick --threshold 0.3")
    assert not (tmp_path / "picks" / "star").exists()
    assert run(capsys, "pick", "--probs", tmp_path / "probs", "--out", tmp_path / "picks", "--diameter-px", 12)[0] == 0


def test_stale_lock_of_a_dead_run_is_taken_over(capsys, tmp_path):
    import socket
    _prob_maps(tmp_path, n=1)
    (tmp_path / "picks").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "picks" / ".cryoseg.lock").write_text(json.dumps(dict(pid=int(dead.stdout), host=socket.gethostname(),
                                                                      command="cryoseg pick", since="yesterday")))
    rc, _, err = run(capsys, "pick", "--probs", tmp_path / "probs", "--out", tmp_path / "picks", "--diameter-px", 12)
    assert rc == 0, err
    assert f"taking over the lock of a run that is no longer running (pid {int(dead.stdout)} on" in err, err
    assert not (tmp_path / "picks" / ".cryoseg.lock").exists()


def test_two_concurrent_pick_force_runs_never_mix(tmp_path):
    """Two `pick --force` with different thresholds on one --out: a slow one (0.1 s a map), and a fast one started
    once the slow one has written its first file (it would overtake it and leave a mix). One is refused; no mix."""
    import time
    probs = _graded_maps(tmp_path, n=30)
    code = textwrap.dedent(f"""
        import sys, time
        import cryoseg.pick
        real = cryoseg.pick.pick_particles
        def slow(*a, **kw):
            time.sleep(float(sys.argv[2]))
            return real(*a, **kw)
        cryoseg.pick.pick_particles = slow
        from cryoseg.cli.main import main
        sys.exit(main(["pick", "--probs", {str(probs)!r}, "--out", {str(tmp_path / "picks")!r}, "--diameter-px", "12",
                       "--force", "--quiet", "--threshold", sys.argv[1]]))""")
    slow = subprocess.Popen([sys.executable, "-c", code, "0.3", "0.1"], stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not list((tmp_path / "picks").glob("star/*.star")) and slow.poll() is None and time.time() - t0 < 240:
        time.sleep(0.05)
    fast = subprocess.Popen([sys.executable, "-c", code, "0.7", "0"], stderr=subprocess.PIPE, text=True)
    results = [(p.wait(timeout=300), p.stderr.read()) for p in (slow, fast)]
    for rc, err in results:
        assert rc == 0 or (rc == 2 and "another cryoseg run is writing into this folder" in err), err
    from cryoseg.coords import read_particles
    counts = {len(read_particles(p, allow_empty=True)) for p in (tmp_path / "picks" / "star").glob("*.star")}
    assert counts in ({5}, {3}), counts                      # all from one run, none mixed
    threshold = json.loads((tmp_path / "picks" / "cryoseg-pick.json").read_text())["config"]["threshold"]
    assert counts == ({5} if threshold == 0.3 else {3})


# 6. failed writes name their path

@pytest.mark.parametrize("err_no, words", [(errno.ENOSPC, "No space left on device (the disk is full)"),
                                           (errno.EACCES, "Permission denied (no permission to write there)"),
                                           (errno.EROFS, "Read-only file system (the file system is read-only)")])
def test_failed_write_is_one_line_naming_the_path(capsys, tmp_path, monkeypatch, err_no, words):
    _prob_maps(tmp_path, n=2)

    def fail(*a, **kw):
        raise OSError(err_no, os.strerror(err_no))           # as raised by write(): no file name
    monkeypatch.setattr("cryoseg.coords.write_particles", fail)
    rc, _, err = run(capsys, "pick", "--probs", tmp_path / "probs", "--out", tmp_path / "picks", "--diameter-px", 12,
                     "--quiet")
    assert_one_line_error(rc, err, f"{tmp_path / 'picks'}: {words}")
    assert "[Errno" not in err


def test_torch_save_error_is_one_line_naming_the_path(capsys, tmp_path, monkeypatch):
    "torch.save on a full disk raises `RuntimeError: [enforce fail at inline_container.cc:672]`: mapped to the path."
    import cryoseg.simulate

    def torch_full(*a, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    monkeypatch.setattr(cryoseg.simulate, "simulate_dataset", torch_full)
    rc, _, err = run(capsys, "simulate", "--out", tmp_path / "s", "--n-micrographs", 1)
    assert_one_line_error(rc, err, f"{tmp_path / 's'}: could not write the file", "is the disk full?", "MiB free")
    assert "RuntimeError" not in err


# 7. options checked before any work

def test_predict_tile_size_checked(capsys, tmp_path, tiny_model):
    model, mics = tiny_model
    rc, _, err = run(capsys, "predict", "--model", model, "--data", mics, "--out", tmp_path / "p", "--tile-size", 8)
    assert_one_line_error(rc, err, "--overlap must be >= 0 and less than half of --tile-size (8 px)")
    rc, _, err = run(capsys, "predict", "--model", model, "--data", mics, "--out", tmp_path / "p", "--tile-size", 8,
                     "--overlap", 0, "--device", "cpu")
    assert_one_line_error(rc, err, "--tile-size 8 is below this network's minimum tile", "use --tile-size >=")
    assert not (tmp_path / "p" / "probabilities").exists()

"""bench/quality.py (issue 16): how a picker's own picks and its ranked candidates are scored, on hand-made tables,
and the phase-flipped, streamed run end to end at toy size (the benchmark itself runs for tens of minutes)."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from script_helpers import ROOT, load_script

SCRIPT = ROOT / "bench" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    return load_script("bench/quality.py")


def picks(rows, name="a.mrc"):
    xy = np.asarray([r[:2] for r in rows], float).reshape(-1, 2)
    return pd.DataFrame(dict(micrograph=name, x=xy[:, 0], y=xy[:, 1], score=[r[2] for r in rows]))


def test_own_picks_give_f1_and_ranked_candidates_give_ap(quality):
    """4 true particles. The picker's own picks (above its threshold) find 2 of them and nothing else: precision 1,
    recall 1/2. Ranking every candidate it has also finds the other two, below one false candidate: AP over the
    ranked list (interpolated: the best precision at each recall or above) is (1 + 1 + 4/5 + 4/5) / 4 = 0.9, where the
    own picks alone give 1/2."""
    truth = picks([(100, 100, 1), (300, 100, 1), (100, 300, 1), (300, 300, 1)])
    own = picks([(101, 100, 0.9), (300, 101, 0.8)])
    every = pd.concat([own, picks([(500, 500, 0.3), (100, 301, 0.2), (299, 300, 0.1)])], ignore_index=True)
    names = ["a.mrc"]
    row = quality.score_ranked(own, every, truth, names, 40.0, n_boot=20)
    assert (row["precision"], row["recall"], row["n_picks"]) == (1.0, 0.5, 2)
    assert row["f1"] == pytest.approx(2 / 3)
    assert row["ap"] == pytest.approx((1 + 1 + 4 / 5 + 4 / 5) / 4)
    assert quality.score(own, truth, names, 40.0, n_boot=20)["ap"] == pytest.approx(0.5)
    assert row["f1_best"] == pytest.approx(max(2 / 3, 2 * (4 / 5) * 1 / (4 / 5 + 1)))   # all 5 candidates: P 4/5, R 1


def test_gaps_to_the_true_view_observer(quality):
    """Two micrographs of 4 particles. The true-view observer finds all 8; a picker finds 2 per micrograph at its
    own threshold and all of them among its ranked candidates: it is 1 − 2/3 behind in F1, 0 in best F1 and AP. The
    observer's own row gets no gap, and the tables behind the gaps are gone from every row."""
    names = ["a.mrc", "b.mrc"]
    sites = [(100, 100, 1), (300, 100, 1), (100, 300, 1), (300, 300, 1)]
    truth = pd.concat([picks(sites, n) for n in names], ignore_index=True)
    own = pd.concat([picks(sites[:2], n) for n in names], ignore_index=True)
    every = pd.concat([own] + [picks(sites[2:], n).assign(score=0.5) for n in names], ignore_index=True)
    rows = [dict(method=quality.TRUE_VIEW, _tables=(truth, truth)), dict(method="picker", _tables=(own, every))]
    quality.add_gaps(rows, truth, names, 40.0, n_boot=20)
    assert rows[1]["gap_f1"] == pytest.approx(1 / 3) and rows[1]["gap_f1_lo"] == pytest.approx(1 / 3)
    assert rows[1]["gap_f1_best"] == pytest.approx(0) and rows[1]["gap_ap"] == pytest.approx(0)
    assert "gap_f1" not in rows[0] and not any("_tables" in r for r in rows)


@pytest.mark.parametrize("stream", [True, False])
def test_phase_flipped_run_end_to_end(tmp_path, stream):
    """A toy run on phase-flipped micrographs, streamed or on the fixed training set: the network row says so, and
    the ideal observer's rows are there."""
    out = tmp_path / "q.md"
    cmd = [sys.executable, str(SCRIPT), "--size", "192", "--n-particles", "6", "--snrs", "0.1", "--doses", "",
           "--n-train", "2", "--n-val", "1", "--n-test", "2", "--epochs", "1", "--crop", "64", "--bootstrap", "20",
           "--ideal-views", "4", "--topaz-bin", "", "--phase-flip", "--no-crf", "--dice-weight", "0", "--threads", "2",
           "--work", str(tmp_path / "work"), "--out", str(out)]
    cmd += ["--stream", "--samples-per-epoch", "8"] if stream else []
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    net = [ln for ln in text.splitlines() if ln.startswith("| SNR 0.1") and "phase-flipped" in ln]
    assert len(net) == 1 and "cross-entropy loss" in net[0], text
    assert ("fresh simulations every epoch" in net[0]) == stream, net[0]
    ideal = [ln for ln in text.splitlines() if "ideal observer (true views + CTF)" in ln]
    assert len(ideal) == 1, text
    header = next(ln for ln in text.splitlines() if ln.startswith("| condition"))
    assert all(f" {g} " in header for g in ("gap_f1", "gap_f1_best", "gap_ap")), header
    assert "networks on phase-flipped micrographs" in text and "picks at P > 0.01" in text


def test_ideal_views_bench_end_to_end(capsys, monkeypatch):
    "bench/ideal_views.py on a tiny test split: both combinations for the true views and each number of views."
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    iv = load_script("bench/ideal_views.py")
    df = iv.main(["--size", "192", "--n-particles", "6", "--n-test", "2", "--views", "3", "--bootstrap", "20"])
    assert [(str(v), c) for v, c in zip(df["views"], df["combine"])] == [
        ("true", "max"), ("true", "mean"), ("3", "max"), ("3", "mean")]
    assert df[["f1_own", "f1_best", "ap"]].apply(lambda c: c.between(0, 1)).all().all()
    assert "| true | mean |" in capsys.readouterr().out

"""bench/binned_agreement.py's own arithmetic (issue 18): the offsets between matched picks and the report, on
tiny tables (the benchmark itself runs in minutes; `python bench/binned_agreement.py --quick` checks it end to end)."""

import numpy as np
import pandas as pd
import pytest

from cryoseg.metrics import picking_metrics
from script_helpers import load_script



@pytest.fixture(scope="module")
def bench():
    return load_script("bench/binned_agreement.py")


def table(xy, name):
    xy = np.asarray(xy, float).reshape(-1, 2)
    return pd.DataFrame(dict(micrograph=name, x=xy[:, 0], y=xy[:, 1], score=1.0))


def test_offsets_of_a_shifted_copy(bench):
    "Picks shifted by (3, -4) px: every pair matched, offsets (3, -4), r.m.s. 5; a pick beyond the radius is not paired."
    ref = pd.concat([table([[100, 100], [300, 120], [500, 400]], "a.mrc"), table([[50, 60]], "b.mrc")])
    picks = ref.assign(x=ref["x"] + 3, y=ref["y"] - 4)
    picks = pd.concat([picks, table([[900, 900]], "a.mrc")], ignore_index=True)
    d = bench.offsets(picks, ref, ["a.mrc", "b.mrc"], radius_px=20.0)
    np.testing.assert_allclose(d, [[3, -4]] * 4)
    assert bench.rms(d) == pytest.approx(5.0)
    assert np.isnan(bench.rms(np.zeros((0, 2))))
    m = picking_metrics(picks, ref, 40.0, micrographs=["a.mrc", "b.mrc"])
    assert (m["n_matched"], m["n_picks"], m["n_true"]) == (4, 5, 4)


def test_offsets_pair_within_one_micrograph_only(bench):
    "The same coordinates on another micrograph are no match."
    d = bench.offsets(table([[10, 10]], "a.mrc"), table([[10, 10]], "b.mrc"), ["a.mrc", "b.mrc"], radius_px=5.0)
    assert d.shape == (0, 2)


def test_report_renders_with_no_picks(bench):
    "An untrained pair (no picks, no threshold fitted) still gives a readable table: '–' for what is undefined."
    import argparse
    a = argparse.Namespace(
        size=512, pixel_size=2.0, diameter_a=192.0, n_particles=6, snr=0.1, n_train=1, n_val=1, n_test=1, seed=0,
        epochs=1, samples_per_epoch=8, batch_size=8, crop_full=128, crop_binned=32, bin=4.0, device="cpu")
    empty = table([], "a.mrc")
    truth = table([[100, 100]], "a.mrc")
    rows = {tag: dict(picks=empty, t_train=1.0, t_pp=2.0, scale=dict(pixel_size_a=px), picking={},
                      rec=dict(results=dict(seconds_predict=1.0)),
                      vs_truth=picking_metrics(empty, truth, 95.0, micrographs=["a.mrc"]), err=np.zeros((0, 2)))
            for tag, px in (("full", 2.0), ("binned", 8.0))}
    agree = picking_metrics(empty, empty, 95.0, micrographs=["a.mrc"])
    text = bench.report(a, dict(description="test machine"), "0.0 0.0 0.0", "cmd", 95.0, agree, np.zeros((0, 2)), rows, 60.0)
    assert "| full resolution | 2 | 1 | – | – | – | – / – | 0 |" in text and "r.m.s. offset of matched pairs (original px) | – |" in text
    assert "nan" not in text and "says nothing here" in text

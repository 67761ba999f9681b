"Tests of cryoseg.pick, cryoseg.metrics, cryoseg.baselines, cryoseg.plots and cryoseg.widgets: hand-computed metrics, zero divisions, bad inputs."
import numpy as np
import pandas as pd
import pytest
import torch

from cryoseg.baselines import blob_picker, template_picker
from cryoseg.coords import read_particles, write_particles
from cryoseg.metrics import (average_precision, confusion_counts, match_boxes, match_picks, metrics_table,
                             picking_metrics, picking_table, pixel_metrics, pixel_scores, pr_curve)
from cryoseg.pick import pick_particles
from cryoseg.plots import plot_picks, plot_pr
from cryoseg.testing import pick_tables
from cryoseg.testing import soft_discs as _discs


def test_counts_hand_example():
    pred = np.array([[1, 1, 0], [0, 0, 0]])
    target = np.array([[1, 0, 1], [0, 0, 0]])
    assert confusion_counts(pred, target) == dict(tp=1, fp=1, fn=1, tn=3)
    s = pixel_scores(confusion_counts(pred, target))
    assert s == pytest.approx(dict(accuracy=4 / 6, precision=0.5, recall=0.5, iou=1 / 3, f1=0.5))


def test_counts_torch_bool_and_int_agree():
    rng = np.random.default_rng(0)
    p, t = rng.random((3, 5, 7)) > 0.5, rng.random((3, 5, 7)) > 0.3
    c = confusion_counts(p, t)
    assert c == confusion_counts(torch.from_numpy(p.astype(np.int64)), torch.from_numpy(t))
    assert sum(c.values()) == p.size
    assert all(isinstance(v, int) for v in c.values())


@pytest.mark.parametrize("pred,target,expected", [
    (np.zeros((3, 3)), np.zeros((3, 3)), dict(accuracy=1, precision=1, recall=1, iou=1, f1=1)),
    (np.zeros((3, 3)), np.eye(3), dict(accuracy=6 / 9, precision=0, recall=0, iou=0, f1=0)),
    (np.ones((3, 3)), np.zeros((3, 3)), dict(accuracy=0, precision=0, recall=0, iou=0, f1=0)),
    (np.eye(3), np.eye(3), dict(accuracy=1, precision=1, recall=1, iou=1, f1=1)),
    (1 - np.eye(3), np.eye(3), dict(accuracy=0, precision=0, recall=0, iou=0, f1=0)),
])
def test_zero_division_and_extremes(pred, target, expected):
    s = pixel_scores(confusion_counts(pred, target))
    assert s == pytest.approx(expected)
    assert not any(np.isnan(v) for v in s.values())


def test_bad_inputs():
    with pytest.raises(ValueError, match="differs from target shape"):
        confusion_counts(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="binary mask"):
        confusion_counts(np.full((2, 2), 2), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="binary mask"):
        confusion_counts(torch.full((2, 2), 0.5), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="keys tp, fp, fn, tn"):
        pixel_scores({"tp": 1, "fp": 0})


def test_micro_vs_macro():
    a = np.zeros((4, 4)); a[:2] = 1
    b = np.zeros((4, 4)); b[0, 0] = 1
    mi = pixel_metrics([a, np.zeros((4, 4))], [a, b], average="micro")
    ma = pixel_metrics([a, np.zeros((4, 4))], [a, b], average="macro")
    assert mi["recall"] == pytest.approx(8 / 9)
    assert ma["recall"] == pytest.approx(0.5)
    assert mi["tp"] == ma["tp"] == 8 and mi["average"] == "micro"


# ---------------------------------------------------------------- matching and picking metrics


def test_match_never_reuses_a_truth():
    # five picks crowded around one particle: exactly one match
    truth = np.array([[50.0, 50.0]])
    picks = np.array([[50.0, 50.0], [51, 50], [49, 50], [50, 51], [50, 49]])
    pi, ti, d = match_picks(picks, truth, 5)
    assert len(pi) == 1 and ti.tolist() == [0] and pi.tolist() == [0] and d[0] == 0


def test_match_maximises_pairs_not_greedy():
    # greedy nearest-first would pair pick 0 with truth 0 and leave truth 1 unmatched
    truth = np.array([[0.0, 0.0], [4.0, 0.0]])
    picks = np.array([[2.0, 0.0], [-1.5, 0.0]])
    pi, ti, _ = match_picks(picks, truth, 2.5)
    assert sorted(zip(pi.tolist(), ti.tolist())) == [(0, 1), (1, 0)]


def test_match_random_invariants():
    rng = np.random.default_rng(1)
    for _ in range(20):
        p, t = rng.uniform(0, 100, (30, 2)), rng.uniform(0, 100, (25, 2))
        pi, ti, d = match_picks(p, t, 8)
        assert len(set(pi)) == len(pi) and len(set(ti)) == len(ti)
        assert np.all(d <= 8)
        np.testing.assert_allclose(d, np.hypot(*(p[pi] - t[ti]).T))
        # the restricted assignment equals a dense Hungarian with the same rule
        from scipy.optimize import linear_sum_assignment
        D = np.hypot(*(p[:, None] - t[None]).transpose(2, 0, 1))
        big = 1e6
        r, c = linear_sum_assignment(np.where(D <= 8, D, big))
        assert len(pi) == int((D[r, c] <= 8).sum())


def test_box_rule_threshold():
    assert len(match_boxes([[0, 0]], [[10 / 3 - 0.01, 0]], 10)[0]) == 1
    assert len(match_boxes([[0, 0]], [[10 / 3 + 0.01, 0]], 10)[0]) == 0


def _tables():
    truth = pd.DataFrame(dict(micrograph=["m1"] * 2 + ["m2"], x=[10.0, 40, 20], y=[10.0, 10, 20]))
    picks = pd.DataFrame(dict(micrograph=["m1", "m1", "m2"], x=[11.0, 70, 20], y=[10.0, 70, 22],
                              score=[0.9, 0.5, 0.8]))
    return picks, truth


def test_picking_metrics_hand_example():
    picks, truth = _tables()
    m = picking_metrics(picks, truth, diameter_px=10, pixel_size_a=1.5)
    assert (m["n_picks"], m["n_true"], m["n_matched"]) == (3, 3, 2)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["mean_error_px"] == pytest.approx(1.5) and m["mean_error_a"] == pytest.approx(2.25)
    t = picking_table(picks, truth, 10)
    assert t["micrograph"].tolist() == ["m1", "m2", "all"]
    assert t["n_matched"].tolist() == [1, 1, 2]


def test_picking_zero_divisions():
    picks, truth = _tables()
    empty = picks.iloc[:0]
    m = picking_metrics(empty, truth, 10)
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0) and np.isnan(m["mean_error_px"])
    m = picking_metrics(empty, truth.iloc[:0], 10)
    assert (m["precision"], m["recall"], m["f1"]) == (1.0, 1.0, 1.0)
    # picks on a micrograph declared to have no particles: all false
    m = picking_metrics(picks, truth, 10, micrographs=["m1", "m2", "m3"])
    assert m["n_micrographs"] == 3
    extra = pd.concat([picks, pd.DataFrame(dict(micrograph=["m3"], x=[1.0], y=[1.0], score=[0.1]))])
    m = picking_metrics(extra, truth, 10, micrographs=["m1", "m2", "m3"])
    assert m["n_picks"] == 4 and m["n_matched"] == 2


def test_picking_mismatched_names():
    picks, truth = _tables()
    with pytest.raises(ValueError, match="no ground truth"):
        picking_metrics(picks.assign(micrograph="other"), truth, 10)
    # names compared by stem: folders and extensions do not matter
    m = picking_metrics(picks.assign(micrograph=picks.micrograph.map(lambda s: f"/data/{s}.mrc")), truth, 10)
    assert m["n_matched"] == 2


def test_pr_and_ap():
    picks, truth = _tables()
    c = pr_curve(picks, truth, 10)
    assert c["threshold"].tolist() == [0.9, 0.8, 0.5]
    assert c["recall"].is_monotonic_increasing
    # steps: recall 1/3 @ 1, 2/3 @ 1, then a false pick
    assert average_precision(c) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="score"):
        pr_curve(picks.drop(columns="score"), truth, 10)


# ---------------------------------------------------------------- picking


@pytest.mark.parametrize("d", [8, 13, 20])
def test_isolated_centres_within_1px(d):
    rng = np.random.default_rng(d)
    centres = np.array([[1.5 * d + 3 * d * i + rng.uniform(-1, 1), 1.5 * d + rng.uniform(-1, 1)] for i in range(3)])
    prob = _discs((int(3 * d), int(9.5 * d)), centres, d)
    p = pick_particles(prob, d)
    assert len(p) == 3
    pi, ti, dist = match_picks(p, centres, 1.0)
    assert len(pi) == 3 and dist.max() < 0.5


def test_touching_discs_split_in_every_direction():
    d = 14
    for ang in np.linspace(0, np.pi, 7):
        c0 = np.array([30.0, 30.0]); c1 = c0 + d * np.array([np.cos(ang), np.sin(ang)])
        prob = _discs((64, 64), [c0, c1], d)
        p = pick_particles(prob, d)
        assert len(p) == 2, (ang, p)
        assert len(match_picks(p, np.array([c0, c1]), 1.0)[0]) == 2


def test_empty_and_constant_maps():
    assert len(pick_particles(np.zeros((16, 16)), 6)) == 0
    assert len(pick_particles(np.full((16, 16), 0.5), 6)) == 0     # threshold is strict: prob > 0.5
    e = pick_particles(np.zeros((16, 16)), 6, micrograph="x")
    assert {"micrograph", "x", "y", "score", "diameter_px"} <= set(e.columns)


def test_picks_score_and_threshold():
    prob = _discs((40, 80), [[20, 20], [60, 20]], 12)
    prob[:, 40:] *= 0.7                                            # second particle less certain
    p = pick_particles(prob, 12)
    assert len(p) == 2 and p.x.iloc[0] < 40 and p.score.iloc[0] > p.score.iloc[1]
    assert len(pick_particles(prob, 12, threshold=0.75)) == 1


@pytest.mark.parametrize("ext", ["star", "box", "csv", "txt"])
def test_export_round_trip(tmp_path, ext):
    prob = _discs((48, 48), [[12.3, 14.6], [33.2, 30.9]], 10)
    p = pick_particles(prob, 10, micrograph="mic_0007")
    path = write_particles(tmp_path / f"mic_0007.{ext}", p, box_size_px=20 if ext == "box" else None)
    back = read_particles(path)
    tol = 1e-3 if ext != "box" else 0.51          # BOX corners are integers in many readers
    np.testing.assert_allclose(back[["x", "y"]].to_numpy(), p[["x", "y"]].to_numpy(), atol=tol)
    # the picks evaluate perfectly against themselves after the round trip
    assert picking_metrics(back, p, 10)["f1"] == 1.0


# ---------------------------------------------------------------- baselines, simulation, widgets


def _dark_discs(seed=0, snr=2.0, d=12):
    rng = np.random.default_rng(seed)
    xy = np.array([[20.0, 20], [60, 24], [30, 60], [70, 66]])
    prob = _discs((90, 96), xy, d)
    img = -prob + rng.normal(0, 1 / np.sqrt(snr), prob.shape) + 0.02 * np.arange(96)[None]
    return img.astype(np.float32), xy


def test_blob_and_template_pickers_find_discs():
    img, xy = _dark_discs()
    for p in (blob_picker(img, 12), template_picker(img, _discs((17, 17), [[8, 8]], 12), 12)):
        m = picking_metrics(p, xy, 12)
        assert m["recall"] == 1.0 and m["mean_error_px"] < 1.5, m
        assert p["score"].is_monotonic_decreasing


def test_baseline_bad_inputs():
    img, _ = _dark_discs()
    with pytest.raises(ValueError, match="NaN"):
        blob_picker(np.full((8, 8), np.nan), 4)
    with pytest.raises(ValueError, match="constant"):
        template_picker(img, np.zeros((5, 5)), 12)
    with pytest.raises(ValueError, match="diameter_px"):
        blob_picker(img, -1)


def test_figures_headless():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img, xy = _dark_discs()
    p = blob_picker(img, 12)
    ax = plot_picks(img, p, pd.DataFrame(dict(x=xy[:, 0], y=xy[:, 1])), diameter_px=12)
    assert len(ax.patches) >= len(p)
    ax = plot_pr(pr_curve(p, pd.DataFrame(dict(x=xy[:, 0], y=xy[:, 1])), 12))
    assert ax.get_xlabel() == "recall"
    t = metrics_table({"blob": picking_metrics(p, xy, 12)})
    assert t.loc["blob", "n_true"] == 4
    plt.close("all")


def test_simulated_mask_picks_perfectly():
    from cryoseg.simulate import SimConfig, simulate_micrograph
    sim = simulate_micrograph(cfg=SimConfig(shape=(160, 160), n_particles=8), seed=5, name="mic_0005")
    d = sim.params["diameter_px"]
    p = pick_particles(sim.mask, d, micrograph="mic_0005")
    m = picking_metrics(p, sim.particles, d)
    assert m["f1"] == 1.0 and m["mean_error_px"] < 1.0
    # and the pixel metrics of the mask against itself
    assert pixel_scores(confusion_counts(sim.mask, sim.mask))["iou"] == 1.0


def test_widget_views():
    from cryoseg.widgets import browser_view, simulation_view
    picks, truth = _tables()
    v = browser_view(picks[picks.micrograph == "m1"], truth[truth.micrograph == "m1"], 0.6, 10)
    assert v["metrics"]["n_picks"] == 1 and v["metrics"]["precision"] == 1.0 and "F1" in v["summary"]
    s = simulation_view(defocus_um=2.0, snr=0.3)
    assert s["ctf"][0] == pytest.approx(-0.07, abs=1e-4)           # CTF(0) = -amplitude contrast
    assert s["image"].shape == s["mask"].shape == (128, 128)


# ---------------------------------------------------------------- matching at scale (issue 15)
class _Reference:
    """cryoseg.metrics as it was before it was made fast (commit 46def17): one micrograph at a time, pairs in
    Python lists, a Hungarian assignment per connected group. The new code must give the very same numbers."""

    @staticmethod
    def assign(n_pred, n_true, pairs):
        from scipy.optimize import linear_sum_assignment
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components
        if not pairs:
            return np.zeros(0, int), np.zeros(0, int)
        pi, ti, cost = (np.array(v) for v in zip(*pairs))
        g = coo_matrix((np.ones(len(pi)), (pi, ti + n_pred)), shape=(n_pred + n_true,) * 2)
        _, lab = connected_components(g, directed=False)
        out_p, out_t = [], []
        for comp in np.unique(lab[pi]):
            sel = lab[pi] == comp
            up, inv_p = np.unique(pi[sel], return_inverse=True)
            ut, inv_t = np.unique(ti[sel], return_inverse=True)
            c = cost[sel]
            big = (np.abs(c).max() + 1.0) * (min(len(up), len(ut)) + 1)
            m = np.full((len(up), len(ut)), big)
            m[inv_p, inv_t] = c
            r, k = linear_sum_assignment(m)
            ok = m[r, k] < big
            out_p.append(up[r[ok]]); out_t.append(ut[k[ok]])
        p, t = np.concatenate(out_p), np.concatenate(out_t)
        order = np.argsort(p, kind="stable")
        return p[order].astype(int), t[order].astype(int)

    @classmethod
    def outcomes(cls, p, t, rule, radius, box, min_iou):
        from scipy.spatial import cKDTree
        from cryoseg.metrics import box_iou
        if rule == "within":
            if len(p) == 0 or len(t) == 0:
                return np.zeros(len(p), bool), np.zeros(len(t), bool), np.zeros(0)
            dp, _ = cKDTree(t).query(p, distance_upper_bound=radius + 1e-9)
            dt, _ = cKDTree(p).query(t, distance_upper_bound=radius + 1e-9)
            return dp <= radius, dt <= radius, dp[dp <= radius]
        pairs = []
        if len(p) and len(t):
            r = radius + 1e-9 if rule == "distance" else float(box) * np.sqrt(2)
            for i, js in enumerate(cKDTree(p).query_ball_tree(cKDTree(t), r=r)):
                for j in js:
                    if rule == "distance":
                        d = float(np.hypot(*(p[i] - t[j])))
                        if d <= radius:
                            pairs.append((i, j, d))
                    else:
                        iou = float(box_iou(*(p[i] - t[j]), box))
                        if iou >= min_iou:
                            pairs.append((i, j, 1.0 - iou))
        pi, ti = cls.assign(len(p), len(t), pairs)
        correct, found = np.zeros(len(p), bool), np.zeros(len(t), bool)
        correct[pi], found[ti] = True, True
        return correct, found, np.hypot(*(p[pi] - t[ti]).T) if len(pi) else np.zeros(0)

    @classmethod
    def table(cls, picks, truth, d, frac=0.5, rule="distance", min_iou=0.5, missing="empty", score_threshold=None):
        "(rows, summed) of picking_table / picking_metrics; both tables have micrograph, x, y (picks: score)."
        from cryoseg.metrics import picking_scores
        from cryoseg.particles import micrograph_key
        def split(df):
            keys, xy = np.array([micrograph_key(m) for m in df.micrograph], dtype=object), df[["x", "y"]].to_numpy(float)
            return {k: xy[keys == k] for k in pd.unique(keys)}
        P = split(picks if score_threshold is None else picks[picks.score >= score_threshold])
        T = split(truth)
        names = list(T) + ([k for k in P if k not in T and len(P[k])] if missing == "empty" else [])
        rows, errs = [], []
        for k in names:
            p, t = P.get(k, np.zeros((0, 2))), T.get(k, np.zeros((0, 2)))
            c, f, e = cls.outcomes(p, t, rule, frac * d, d, min_iou)
            errs.append(e)
            rows.append(dict(micrograph=k, n_picks=len(p), n_true=len(t), n_matched=int(f.sum()),
                             n_correct_picks=int(c.sum()), **picking_scores(int(f.sum()), len(p), len(t), int(c.sum())),
                             mean_error_px=float(e.mean()) if len(e) else np.nan))
        tot = {k: int(sum(r[k] for r in rows)) for k in ("n_picks", "n_true", "n_matched", "n_correct_picks")}
        e = np.concatenate(errs) if errs else np.zeros(0)
        summed = dict(**picking_scores(tot["n_matched"], tot["n_picks"], tot["n_true"], tot["n_correct_picks"]), **tot,
                      mean_error_px=float(e.mean()) if len(e) else np.nan)
        return rows, summed


def _random_case(rng):
    "Random picks and truth on 1-4 micrographs; half the cases on integer pixels (many exact ties)."
    names = [f"m{i}" for i in range(rng.integers(1, 5))]
    size, integer = rng.choice([20, 40, 100]), rng.random() < 0.5
    pts = lambda n: np.round(rng.uniform(0, size, (n, 2))) if integer else rng.uniform(0, size, (n, 2))
    n_p, n_t = rng.integers(0, 40), rng.integers(0, 40)
    xy_p, xy_t = pts(n_p), pts(n_t)
    picks = pd.DataFrame(dict(micrograph=rng.choice(names, n_p).astype(object), x=xy_p[:, 0], y=xy_p[:, 1],
                              score=np.round(rng.random(n_p), 1)))
    truth = pd.DataFrame(dict(micrograph=[n + ".mrc" for n in rng.choice(names, n_t)], x=xy_t[:, 0], y=xy_t[:, 1]))
    return picks, truth, float(rng.choice([4, 10, 13.5])), float(rng.choice([0.5, 1.0]))


def _same(a, b):
    return a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b))


@pytest.mark.parametrize("rule", ["distance", "box_iou", "within"])
def test_picking_identical_to_reference_on_random_cases(rule):
    "The fast matching gives exactly the numbers of the per-micrograph implementation it replaced."
    rng = np.random.default_rng({"distance": 0, "box_iou": 1, "within": 2}[rule])
    for case in range(50):
        picks, truth, d, frac = _random_case(rng)
        rows, summed = _Reference.table(picks, truth, d, frac, rule)
        m = picking_metrics(picks, truth, d, frac=frac, rule=rule, missing="empty")
        tab = picking_table(picks, truth, d, frac=frac, rule=rule, missing="empty")
        assert all(_same(summed[k], m[k]) for k in summed), (case, summed, m)
        assert tab["micrograph"].tolist()[:-1] == [r["micrograph"] for r in rows]
        for r, (_, row) in zip(rows, tab.iterrows()):
            assert all(_same(r[k], row[k]) for k in r), (case, r, dict(row))
        if len(picks):
            curve = pr_curve(picks, truth, d, frac=frac, rule=rule, missing="empty")
            for _, row in curve.iloc[::4].iterrows():
                ref = _Reference.table(picks, truth, d, frac, rule, score_threshold=row["threshold"])[1]
                assert all(_same(ref[k], row[k]) for k in ("n_picks", "n_matched", "precision", "recall", "f1")), case
        p, t = picks[["x", "y"]].to_numpy(), truth[["x", "y"]].to_numpy()          # one micrograph, arrays
        c_ref, f_ref, _ = _Reference.outcomes(p, t, rule, frac * d, d, 0.5)
        from cryoseg.metrics import pick_outcomes
        c, f = pick_outcomes(p, t, d, frac=frac, rule=rule)
        assert np.array_equal(c, c_ref) and np.array_equal(f, f_ref), case
        if rule != "within":
            pi, ti, _ = (match_picks(p, t, frac * d) if rule == "distance" else match_boxes(p, t, d))
            assert np.array_equal(c, np.isin(np.arange(len(p)), pi)) and len(set(ti)) == len(ti), case


def test_picking_report_matches_once(monkeypatch):
    "picking_report = (picking_metrics, picking_table), from one matching."
    import cryoseg.metrics as M
    from cryoseg.metrics import picking_report
    picks, truth, d, frac = _random_case(np.random.default_rng(5))
    calls = []
    real = M._candidates
    monkeypatch.setattr(M, "_candidates", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    m, tab = picking_report(picks, truth, d, missing="empty")
    assert len(calls) == 1
    monkeypatch.setattr(M, "_candidates", real)
    assert m == picking_metrics(picks, truth, d, missing="empty") or all(
        _same(v, picking_metrics(picks, truth, d, missing="empty")[k]) for k, v in m.items())
    pd.testing.assert_frame_equal(tab, picking_table(picks, truth, d, missing="empty"))


def test_picking_scales_to_many_micrographs():
    "40,000 particles on 200 micrographs: report and 50-point PR curve in seconds (the old code took minutes)."
    import time
    picks, truth = pick_tables(40_000)
    t0 = time.process_time()
    m, tab, curve = picking_metrics(picks, truth, 40), picking_table(picks, truth, 40), pr_curve(picks, truth, 40)
    cpu = time.process_time() - t0
    assert len(tab) == 201 and len(curve) == 50 and 0.8 < m["recall"] < 0.95
    assert curve["n_matched"].iloc[-1] == m["n_matched"] == tab["n_matched"].iloc[-1]
    assert cpu < 8, cpu                                   # about 1.5 s here; the old code took minutes

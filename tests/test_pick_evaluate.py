"Tests of cryoseg.pick and cryoseg.evaluate: hand-computed metrics, zero divisions, bad inputs."
import numpy as np
import pytest
import torch

from cryoseg.evaluate import confusion_counts, pixel_scores, pixel_metrics


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

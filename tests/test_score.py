"""Metrics of netspec.score against a hand-worked confusion matrix and naive loops."""
import warnings

import numpy as np
import pytest

from netspec.errors import NetspecError
from netspec.score import compute_hist, fast_hist, scores, seg11valid_ids

# Hand-worked 3-class example.  Pixels (label, prediction), the last one void:
LABEL = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 255])
PRED = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 0])
# rows = ground truth, columns = prediction
HAND_HIST = np.array([[2, 1, 1],
                      [1, 2, 0],
                      [0, 0, 2]])
# t = (4, 3, 2), predicted totals (3, 3, 3), diagonal (2, 2, 2)
HAND_PIXEL_ACC = 6 / 9
HAND_ACC = np.array([2 / 4, 2 / 3, 2 / 2])
HAND_IU = np.array([2 / (4 + 3 - 2), 2 / (3 + 3 - 2), 2 / (2 + 3 - 2)])  # 2/5, 1/2, 2/3
HAND_MEAN_IU = (2 / 5 + 1 / 2 + 2 / 3) / 3  # 47/90
HAND_FWAVACC = (4 * 2 / 5 + 3 * 1 / 2 + 2 * 2 / 3) / 9  # 133/270


def test_fast_hist_matches_hand_count():
    hist = fast_hist(LABEL, PRED, 3)
    assert hist.dtype == np.int64
    np.testing.assert_array_equal(hist, HAND_HIST)


def test_fast_hist_matches_naive_loop_and_ignores_void():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, (17, 23))
    label[rng.random(label.shape) < 0.2] = 255
    pred = rng.integers(0, 5, (17, 23))
    expected = np.zeros((5, 5), np.int64)
    for t, p in zip(label.ravel(), pred.ravel()):
        if t != 255:
            expected[t, p] += 1
    np.testing.assert_array_equal(fast_hist(label, pred, 5), expected)


def test_scores_hand_example():
    s = scores(HAND_HIST)
    assert s["pixel_acc"] == pytest.approx(HAND_PIXEL_ACC)
    np.testing.assert_allclose(s["per_class_acc"], HAND_ACC)
    assert s["mean_acc"] == pytest.approx(HAND_ACC.mean())
    np.testing.assert_allclose(s["per_class_iu"], HAND_IU)
    assert s["mean_iu"] == pytest.approx(47 / 90)
    assert s["mean_iu"] == pytest.approx(HAND_MEAN_IU)
    assert s["fwavacc"] == pytest.approx(133 / 270)
    assert s["fwavacc"] == pytest.approx(HAND_FWAVACC)


def test_absent_class_drops_out_without_warnings():
    hist = np.zeros((4, 4), np.int64)
    hist[:3, :3] = HAND_HIST  # class 3: neither in the ground truth nor predicted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = scores(hist)
    assert np.isnan(s["per_class_iu"][3]) and np.isnan(s["per_class_acc"][3])
    assert s["mean_iu"] == pytest.approx(47 / 90)
    assert s["mean_acc"] == pytest.approx(HAND_ACC.mean())
    assert s["fwavacc"] == pytest.approx(133 / 270)


def test_predicted_but_absent_class_counts_as_zero_iu():
    hist = np.zeros((4, 4), np.int64)
    hist[:3, :3] = HAND_HIST
    hist[0, 3] = 1  # one class-0 pixel predicted as class 3, which is not in the ground truth
    s = scores(hist)
    assert s["per_class_iu"][3] == 0
    iu0 = 2 / (5 + 3 - 2)
    assert s["mean_iu"] == pytest.approx((iu0 + 1 / 2 + 2 / 3 + 0) / 4)
    assert np.isnan(s["per_class_acc"][3])  # accuracy of a class with no ground truth is undefined


def test_empty_histogram_gives_nan_quietly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = scores(np.zeros((3, 3)))
    assert np.isnan(s["mean_iu"]) and np.isnan(s["pixel_acc"])


def test_fast_hist_rejects_bad_input():
    with pytest.raises(NetspecError):
        fast_hist(np.zeros(4), np.zeros(5), 3)
    with pytest.raises(NetspecError):
        fast_hist(np.zeros(4), np.array([0, 1, 2, 3]), 3)


def test_compute_hist_accumulates_argmax_over_images():
    rng = np.random.default_rng(1)
    images, labels, expected = [], [], np.zeros((3, 3), np.int64)
    for h, w in [(4, 5), (6, 3)]:
        images.append(rng.normal(size=(3, h, w)))  # the "net" returns the image itself as scores
        label = rng.integers(0, 3, (1, h, w))
        label[0, 0, 0] = 255
        labels.append(label)
        pred = images[-1].argmax(axis=0)
        for t, p in zip(label.ravel(), pred.ravel()):
            if t != 255:
                expected[t, p] += 1
    hist = compute_hist(lambda image: image, zip(images, labels), 3)
    np.testing.assert_array_equal(hist, expected)
    with pytest.raises(NetspecError):
        compute_hist(lambda image: image[:, :-1], zip(images, labels), 3)


def _write_lines(path, ids):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def test_seg11valid_is_val_minus_sbd_train(tmp_path):
    voc = tmp_path / "VOC2011"
    _write_lines(voc / "ImageSets/Segmentation/val.txt", ["a", "b", "c", "d", "e"])
    _write_lines(tmp_path / "sbd_train.txt", ["b", "d", "z"])
    assert seg11valid_ids(voc, tmp_path / "sbd_train.txt", expected=None) == ["a", "c", "e"]
    assert seg11valid_ids(voc, ["a"], expected=None) == ["b", "c", "d", "e"]
    with pytest.raises(NetspecError, match="736"):
        seg11valid_ids(voc, tmp_path / "sbd_train.txt")


def test_seg11valid_has_736_with_real_sized_lists(tmp_path):
    # same sizes as the real lists: 1112 val ids, 8498 SBD train ids of which 376 are val ids
    val = [f"2011_{i:06d}" for i in range(1112)]
    sbd_train = val[:376] + [f"2008_{i:06d}" for i in range(8498 - 376)]
    _write_lines(tmp_path / "VOC2011/ImageSets/Segmentation/val.txt", val)
    result = seg11valid_ids(tmp_path / "VOC2011", sbd_train)
    assert len(result) == 736 and result == val[376:]


def test_seg11valid_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(NetspecError, match="val.txt"):
        seg11valid_ids(tmp_path / "nowhere", ["a"])

"""Segmentation metrics of the FCN paper, computed from a confusion histogram.

``hist[i, j]`` counts the pixels whose ground truth is class ``i`` and whose
prediction is class ``j`` (the paper's ``n_ij``); pixels labelled outside
``[0, n)``, such as VOC's 255 border, are left out.  From it:

- pixel accuracy  ``sum_i n_ii / sum_i t_i``
- mean accuracy   ``mean_i n_ii / t_i``
- mean IU         ``mean_i n_ii / (t_i + sum_j n_ji - n_ii)``
- f.w. IU         ``(sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)``

with ``t_i = sum_j n_ij``.  A class whose ratio is 0/0 (for IU: absent from both
ground truth and prediction; for accuracy: absent from the ground truth) is
left out of the mean, as the reference's ``nanmean`` does.
"""
import os

import numpy as np

from netspec.errors import NetspecError

#: Size of the FCN paper's validation split ``seg11valid`` (see :func:`seg11valid_ids`).
SEG11VALID_COUNT = 736
#: Sizes of the real inputs from which seg11valid is derived.
VOC2011_SEG_VAL_COUNT = 1112
SBD_TRAIN_COUNT = 8498


def fast_hist(label, pred, n):
    """Return the ``(n, n)`` int64 confusion histogram of ``label`` (rows) against ``pred`` (columns).

    Pixels whose label is outside ``[0, n)`` (e.g. 255 = void) are ignored.
    """
    label = np.asarray(label).ravel()
    pred = np.asarray(pred).ravel()
    if label.shape != pred.shape:
        raise NetspecError(f"fast_hist: label has {label.size} pixels but prediction has {pred.size}; "
                           "they must be the same size")
    keep = (label >= 0) & (label < n)
    label = label[keep].astype(np.int64)
    pred = pred[keep].astype(np.int64)
    if pred.size and (pred.min() < 0 or pred.max() >= n):
        raise NetspecError(f"fast_hist: predicted class {int(pred.max())} is outside 0..{n - 1}; "
                           "pass the score layer's channel count as n")
    counts = np.bincount(n * label + pred, minlength=n * n)
    return counts.reshape(n, n).astype(np.int64)


def _ratio(numerator, denominator):
    """Elementwise ``numerator / denominator`` with NaN (no warning) where the denominator is 0."""
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    out = np.full(numerator.shape, np.nan)
    nonzero = denominator != 0
    out[nonzero] = numerator[nonzero] / denominator[nonzero]
    return out


def _mean_of_defined(values):
    """Mean over the non-NaN entries; NaN when there are none (no warning)."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def scores(hist):
    """The four FCN metrics from a confusion histogram.

    Returns a dict with ``pixel_acc``, ``mean_acc``, ``mean_iu``, ``fwavacc`` (floats)
    and ``per_class_acc``, ``per_class_iu`` (float arrays, NaN for undefined classes).
    """
    hist = np.asarray(hist, np.float64)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise NetspecError(f"scores: the histogram must be square (n, n), got shape {hist.shape}")
    correct = np.diag(hist)
    gt_total = hist.sum(axis=1)
    pred_total = hist.sum(axis=0)
    per_class_acc = _ratio(correct, gt_total)
    per_class_iu = _ratio(correct, gt_total + pred_total - correct)
    total = hist.sum()
    frequency = gt_total / total if total else np.zeros_like(gt_total)
    present = frequency > 0
    return {
        "pixel_acc": float(correct.sum() / total) if total else float("nan"),
        "mean_acc": _mean_of_defined(per_class_acc),
        "mean_iu": _mean_of_defined(per_class_iu),
        "fwavacc": float((frequency[present] * per_class_iu[present]).sum()) if total else float("nan"),
        "per_class_acc": per_class_acc,
        "per_class_iu": per_class_iu,
    }


def compute_hist(run_net_fn, dataset_iter, n_cl):
    """Accumulate the confusion histogram of a network over a dataset.

    ``dataset_iter`` yields ``(image, label)`` pairs; ``run_net_fn(image)`` returns
    the class scores ``(C, H, W)`` (or ``(1, C, H, W)``) whose argmax over C is the
    prediction compared with ``label`` (``(H, W)`` or ``(1, H, W)``).
    """
    hist = np.zeros((n_cl, n_cl), np.int64)
    for image, label in dataset_iter:
        score = np.asarray(run_net_fn(image))
        if score.ndim == 4 and score.shape[0] == 1:
            score = score[0]
        if score.ndim != 3:
            raise NetspecError(f"compute_hist: the net's score must be (C, H, W), got shape {score.shape}")
        label = np.asarray(label)
        label = label.reshape(label.shape[-2:])
        if score.shape[1:] != label.shape:
            raise NetspecError(f"compute_hist: score is {score.shape[1]}x{score.shape[2]} but the label is "
                               f"{label.shape[0]}x{label.shape[1]}; crop the score to the input size")
        hist += fast_hist(label, score.argmax(axis=0), n_cl)
    return hist


def _read_ids(path, what):
    if not os.path.isfile(path):
        raise NetspecError(f"{path}: {what} not found; point to the real dataset directory")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def seg11valid_ids(voc2011_dir, sbd_train_ids, expected=SEG11VALID_COUNT):
    """The FCN paper's ``seg11valid`` split: VOC2011 segmentation val minus SBD train.

    VOC2011's segmentation ``val.txt`` (1112 images) intersects SBD's ``train.txt``
    (8498 images); the reference repo ships the 736 val images that are *not* in
    SBD train as ``data/pascal/seg11valid.txt``.  This rebuilds that list, in the
    order of VOC's val.txt.

    ``voc2011_dir`` is the ``VOC2011`` directory (holding ``ImageSets/Segmentation/val.txt``);
    ``sbd_train_ids`` is SBD's ``train.txt`` path or an iterable of image ids.  With the real
    files the result has ``expected`` (736) ids and anything else is an error; pass
    ``expected=None`` to skip that check (e.g. on a toy dataset).
    """
    val_path = os.path.join(os.fspath(voc2011_dir), "ImageSets", "Segmentation", "val.txt")
    val_ids = _read_ids(val_path, "VOC2011 segmentation val list")
    if isinstance(sbd_train_ids, (str, os.PathLike)):
        sbd_train_ids = _read_ids(os.fspath(sbd_train_ids), "SBD train list")
    sbd_train = set(sbd_train_ids)
    valid = [image_id for image_id in val_ids if image_id not in sbd_train]
    if expected is not None and len(valid) != expected:
        raise NetspecError(
            f"{val_path}: VOC2011 val ({len(val_ids)} ids, real: {VOC2011_SEG_VAL_COUNT}) minus SBD train "
            f"({len(sbd_train)} ids, real: {SBD_TRAIN_COUNT}) gives {len(valid)} images, not {expected}; "
            "use the VOC2011 val list and SBD's train.txt, or pass expected=None for other data")
    return valid


def net_hist(net, iterations, n_cl, score_blob="score", label_blob="label", after_pass=None):
    """Confusion histogram of a netspec/pycaffe ``Net`` whose data layer feeds ``label_blob``.

    Runs ``iterations`` forward passes (the data layer advances each time, as in the
    reference ``score.seg_tests``) and compares ``argmax`` over ``score_blob``'s
    channels with the labels.  ``after_pass(i, net, prediction)``, if given, sees each
    pass (e.g. to keep pictures of the first few).
    """
    hist = np.zeros((n_cl, n_cl), np.int64)
    for i in range(iterations):
        net.forward()
        prediction = net.blobs[score_blob].data[0].argmax(0)
        label = net.blobs[label_blob].data[0]
        hist += fast_hist(label.reshape(-1).astype(np.int64), prediction.reshape(-1), n_cl)
        if after_pass is not None:
            after_pass(i, net, prediction)
    return hist


def format_scores(result, class_names=None):
    """The four metrics (and per-class IU) as printable lines, in percent like the paper."""
    lines = [f"pixel accuracy     {100 * result['pixel_acc']:.2f}",
             f"mean accuracy      {100 * result['mean_acc']:.2f}",
             f"mean IU            {100 * result['mean_iu']:.2f}",
             f"f.w. IU            {100 * result['fwavacc']:.2f}"]
    for i, iu in enumerate(result["per_class_iu"]):
        name = class_names[i] if class_names and i < len(class_names) else f"class {i}"
        lines.append(f"  IU {name:<14} {'   n/a' if np.isnan(iu) else f'{100 * iu:6.2f}'}")
    return lines

"""PCK (percentage of correct keypoints), as the thesis uses it (Secs. 2.2, 2.4).

A predicted keypoint is correct when its Euclidean distance to the ground truth is
strictly less than ``alpha * max(h, w)`` of the instance's bounding box.  Only
keypoints visible in the ground truth are scored (a prediction for a keypoint that
is not visible is not penalised); a missing prediction (None or NaN) for a visible
keypoint counts as wrong.

Averaging: for each category and keypoint type, the fraction of that type's visible
instances predicted correctly; a category's PCK is the mean over its keypoint types
(types never visible are left out); the overall mean is the mean over categories (the
"mean" column of Tables 2.2 and 2.4).
"""
import numpy as np

ALPHAS = (0.1, 0.05, 0.025)


def is_correct(predicted, truth, box_size, alpha):
    """``|predicted - truth| < alpha * max(h, w)``; False when nothing was predicted."""
    if predicted is None or not np.all(np.isfinite(predicted)):
        return False
    d = np.hypot(predicted[0] - truth[0], predicted[1] - truth[1])
    return bool(d < alpha * max(box_size))


def pck(records, alpha=0.1):
    """``records``: iterable of ``(category, keypoint name, predicted (x, y) or None,
    truth (x, y), visible, (box w, box h))``.

    Returns ``(mean over categories, {category: mean over types}, {(category, type): PCK})``,
    all fractions in [0, 1]; NaN for the mean when no keypoint is visible.
    """
    hits = {}
    for category, name, predicted, truth, visible, box_size in records:
        if not visible:
            continue
        hits.setdefault((category, name), []).append(is_correct(predicted, truth, box_size, alpha))
    per_type = {key: float(np.mean(v)) for key, v in hits.items()}
    per_category = {}
    for (category, _), value in per_type.items():
        per_category.setdefault(category, []).append(value)
    per_category = {c: float(np.mean(v)) for c, v in sorted(per_category.items())}
    mean = float(np.mean(list(per_category.values()))) if per_category else float("nan")
    return mean, per_category, per_type


def pck_records(instances, predictions):
    """Records for :func:`pck` from instances (``netspec.keypoints.annotations.Instance``)
    and ``predictions[i] = {name: (x, y) or None}`` in image coordinates."""
    for instance, predicted in zip(instances, predictions):
        for name, (x, y, visible) in instance.keypoints.items():
            yield (instance.category, name, predicted.get(name), (x, y), visible,
                   (instance.bbox[2], instance.bbox[3]))

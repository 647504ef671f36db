"""Keypoint classification (thesis Sec. 2.3, Table 2.3) and keypoint prediction with
sliding-window part detectors and a nearest-neighbour prior (Sec. 2.4, Table 2.4).

Linear SVMs are scikit-learn's ``LinearSVC`` (liblinear; squared hinge loss, L2
penalty).  Features are divided by one scalar, the mean L2 norm of the training
features, so that one ``C`` suits any layer (the thesis's ``C = 1e-6`` was for raw
conv activations, whose norms are in the hundreds; scaling features by ``a`` is the
same as scaling ``C`` by ``a**2``).

Classification: the feature of a keypoint is the column of the layer's grid whose rf
centre is nearest to it (whole image); per category, one-vs-all linear SVMs over the
category's keypoint types are trained on the train split and scored on val; the
accuracy of a category is the fraction of val keypoints labelled right (visible
keypoints inside the image only), and the mean is over categories.

Prediction: every instance's box is rescaled to ``size x size`` (the thesis: 500) and
each cell's descriptor is the concatenation of the 3 x 3 cells around it (zeros past
the border).  Per category and keypoint type one linear SVM: positives are the
``positives`` (10) cells whose rf centres are closest to the keypoint in each training
box; negatives are the cells whose 3 x 3 receptive field does not contain the keypoint
(Chebyshev distance from centre to keypoint over half the rf size; capped at
``size / 4`` so small boxes keep negatives).  Training starts from ``initial_negatives``
random negatives per box and adds, for ``rounds`` rounds of hard negative mining, every
negative scoring above -1 (inside the margin).  At test time the prediction is the rf
centre of the best-scoring cell.  With the prior: a spherical Gaussian ``p(X) =
exp(-|X - mu|^2 / (2 sigma^2))`` centred on the keypoint in the nearest training
neighbour (cosine similarity of a global feature, the thesis's pool5; the next
neighbour that shows the keypoint), ``sigma = 22 * size / 500`` pixels, combined as
``f = s^(1 - eta) p^eta`` with ``eta = 0.1`` and ``s`` the SVM score mapped to (0, 1)
by the logistic function (the thesis does not say how negative SVM scores enter).
"""
import warnings

import numpy as np

from .extract import nearest_cell, to_box, to_image
from .flow import cosine_neighbours


def _svm(C):
    from sklearn.svm import LinearSVC
    return LinearSVC(C=C, max_iter=5000, dual="auto")


def _fit(model, X, y):
    from sklearn.exceptions import ConvergenceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    return model


# -- classification (Table 2.3) --------------------------------------------------------
def keypoint_columns(extractor, instances, layer):
    """``(features (n, C), labels [name], categories [category])`` of every visible keypoint
    inside its image, from the grid column whose rf centre is nearest."""
    X, labels, categories = [], [], []
    for instance in instances:
        F, cy, cx = extractor.image(instance.image)[layer]
        height, width = cy[-1] + (cy[1] - cy[0] if len(cy) > 1 else 1), cx[-1] + (cx[1] - cx[0] if len(cx) > 1 else 1)
        for name, (x, y, visible) in instance.keypoints.items():
            if not visible or not (0 <= x < width + 1 and 0 <= y < height + 1):
                continue
            i, j = nearest_cell(cy, cx, x, y)
            X.append(np.asarray(F[:, i, j], np.float64))
            labels.append(name)
            categories.append(instance.category)
    return np.asarray(X).reshape(len(X), -1), labels, categories


def classify_experiment(extractor, layer, train, val, C=1.0):
    """Keypoint classification accuracy: ``(mean over categories, {category: accuracy})``."""
    Xt, yt, ct = keypoint_columns(extractor, train, layer)
    Xv, yv, cv = keypoint_columns(extractor, val, layer)
    scale = np.linalg.norm(Xt, axis=1).mean() if len(Xt) else 1.0
    scale = scale if scale > 0 else 1.0
    Xt, Xv = Xt / scale, Xv / scale
    yt, yv, ct, cv = map(np.asarray, (yt, yv, ct, cv))
    accuracy = {}
    for category in sorted(set(cv)):
        test = cv == category
        fit = ct == category
        classes = sorted(set(yt[fit]))
        if not classes:
            continue
        if len(classes) == 1:
            predicted = np.full(test.sum(), classes[0])
        else:
            predicted = _fit(_svm(C), Xt[fit], yt[fit]).predict(Xv[test])
        accuracy[category] = float(np.mean(predicted == yv[test]))
    mean = float(np.mean(list(accuracy.values()))) if accuracy else float("nan")
    return mean, accuracy


# -- prediction (Table 2.4) ---------------------------------------------------------------
def concat3x3(F):
    """``(C, h, w)`` -> ``(9 C, h, w)``: each cell with its eight neighbours (zero padded)."""
    C, h, w = F.shape
    padded = np.zeros((C, h + 2, w + 2), F.dtype)
    padded[:, 1:-1, 1:-1] = F
    return np.concatenate([padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)])


class _Box:
    """An instance's descriptors and cell centres in its ``size x size`` box."""

    def __init__(self, instance, grid, size):
        F, cy, cx = grid
        D = concat3x3(np.asarray(F, np.float64))
        self.X = D.reshape(D.shape[0], -1).T                                 # (cells, 9C)
        yy, xx = np.meshgrid(cy, cx, indexing="ij")
        self.centres = np.stack([xx.ravel(), yy.ravel()], -1)                # (cells, 2) as (x, y)
        names = list(instance.keypoints)
        pts = to_box([instance.keypoints[n][:2] for n in names], instance.bbox, size)
        self.keypoints = {n: (p, instance.keypoints[n][2]) for n, p in zip(names, pts)}
        self.stride = float(cy[1] - cy[0]) if len(cy) > 1 else float(size)


def _negative_distance(rf_size, stride, size):
    rf = (rf_size or 2 * stride) + 2 * stride          # the 3 x 3 concatenation widens the rf
    return min(rf / 2.0, size / 4.0)


def train_detector(boxes, name, C, rf_size, size, positives=10, initial_negatives=20, rounds=2, seed=0):
    """One keypoint's linear SVM over ``_Box`` es, with hard negative mining."""
    rng = np.random.default_rng(seed)
    pos, negs = [], []
    for box in boxes:
        if name not in box.keypoints or not box.keypoints[name][1]:
            continue
        point = box.keypoints[name][0]
        d = np.hypot(*(box.centres - point).T)
        pos.append(box.X[np.argsort(d, kind="stable")[:positives]])
        cheb = np.abs(box.centres - point).max(1)
        far = np.nonzero(cheb > _negative_distance(rf_size, box.stride, size))[0]
        if len(far):
            negs.append(box.X[far])
    if not pos or not negs:
        return None
    P = np.concatenate(pos)
    pool = np.concatenate(negs)
    chosen = set(rng.permutation(len(pool))[:initial_negatives * len(negs)].tolist())
    model = None
    for _ in range(rounds + 1):
        idx = np.array(sorted(chosen))
        X = np.concatenate([P, pool[idx]])
        y = np.concatenate([np.ones(len(P)), -np.ones(len(idx))])
        model = _fit(_svm(C), X, y)
        hard = np.nonzero(model.decision_function(pool) > -1)[0]
        new = set(hard.tolist()) - chosen
        if not new:
            break
        chosen |= new
    return model


def predict_experiment(extractor, layer, train, val, size=500, C=1.0, positives=10, rounds=2,
                       initial_negatives=20, eta=0.1, sigma=None, global_feature=None, seed=0):
    """Predicted keypoints of every val instance, without and with the prior.

    ``global_feature(instance) -> vector`` picks the nearest training neighbour for the
    prior (default: the flattened grid of ``layer``).  Returns ``{"svm": [...],
    "svm+prior": [...], "prior": [...]}``, each a list over ``val`` of ``{name: (x, y)
    or None}`` in image coordinates ("prior": the neighbour's keypoint itself).
    """
    sigma = 22.0 * size / 500.0 if sigma is None else sigma
    rf_size = extractor.rf_sizes.get(layer)
    global_feature = global_feature or (lambda inst: np.asarray(extractor.box(inst, size)[layer][0]).ravel())
    train_boxes = [_Box(i, extractor.box(i, size)[layer], size) for i in train]
    scale = np.mean([np.linalg.norm(b.X, axis=1).mean() for b in train_boxes]) if train_boxes else 1.0
    scale = scale if scale > 0 else 1.0
    for b in train_boxes:
        b.X = b.X / scale
    detectors = {}
    for category in sorted({i.category for i in val}):
        members = [b for b, i in zip(train_boxes, train) if i.category == category]
        names = []
        for i in train + val:
            if i.category == category:
                names += [n for n in i.keypoints if n not in names]
        for k, name in enumerate(names):
            detectors[(category, name)] = train_detector(members, name, C, rf_size, size, positives,
                                                         initial_negatives, rounds, seed + k)
    train_globals = {id(i): global_feature(i) for i in train}
    out = {"svm": [], "svm+prior": [], "prior": []}
    for instance in val:
        box = _Box(instance, extractor.box(instance, size)[layer], size)
        box.X = box.X / scale
        same = [i for i in train if i.category == instance.category]
        order = [same[j] for j in cosine_neighbours(global_feature(instance),
                                                    [train_globals[id(i)] for i in same], len(same))]
        results = {"svm": {}, "svm+prior": {}, "prior": {}}
        for name in instance.keypoints:
            mu = None
            for neighbour in order:
                if name in neighbour.keypoints and neighbour.keypoints[name][2]:
                    mu = to_box([neighbour.keypoints[name][:2]], neighbour.bbox, size)[0]
                    break
            model = detectors.get((instance.category, name))
            results["prior"][name] = None if mu is None else mu
            if model is None:
                results["svm"][name] = results["svm+prior"][name] = mu
                continue
            s = model.decision_function(box.X)
            results["svm"][name] = box.centres[int(np.argmax(s))]
            if mu is None:
                results["svm+prior"][name] = results["svm"][name]
                continue
            log_s = -np.logaddexp(0.0, -s)                              # log sigmoid(s)
            log_p = -((box.centres - mu) ** 2).sum(1) / (2 * sigma ** 2)
            results["svm+prior"][name] = box.centres[int(np.argmax((1 - eta) * log_s + eta * log_p))]
        for kind, points in results.items():
            out[kind].append({n: None if p is None else tuple(to_image([p], instance.bbox, size)[0])
                              for n, p in points.items()})
    return out

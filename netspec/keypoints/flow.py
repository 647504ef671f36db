"""Convnet flow (thesis Sec. 2.2): dense MRF correspondence between two feature grids.

Given feature grids ``f_s`` and ``f_t`` (``(C, h, w)``, one feature per receptive-field
centre), find for every source grid point ``p`` a displacement ``w(p)`` (in grid cells,
each component in ``[-radius, radius]``) minimising

    E(w) = sum_p ||f_s(p) - f_t(p + w(p))||_2  +  beta * sum_{p~q} ||w(p) - w(q)||_2^2

over the 4-connected grid: the data term is the (unsquared) L2 distance, the
smoothness term the squared L2 distance of neighbouring displacements, as in the
thesis (its ``beta = 3e-3`` is for raw conv4/SIFT features, displacement in grid
cells).  A displacement that leaves the target grid costs ``OUTSIDE`` (a large finite
number, so that the distance transform stays finite).

The minimiser is min-sum loopy belief propagation (Felzenszwalb & Huttenlocher 2006):
messages are computed for all nodes and all four directions at once (synchronous,
"flooding" schedule) and normalised to a zero minimum; each message is the squared
Euclidean distance transform of ``h = D_p + sum of the other incoming messages``,
computed in linear time per axis with the lower-envelope algorithm of Felzenszwalb &
Huttenlocher (2004/2012), first along the ``dy`` axis and then along ``dx`` (the
quadratic cost is separable).  On a tree (e.g. a 1 x n chain) ``iterations >=``
its diameter gives the exact minimiser.

Warping: the displacement field in pixels, ``(c_t[i + w(i)] - c_s[i])`` per axis, is
interpolated with ``scipy.interpolate.RectBivariateSpline`` (cubic where the grid has at
least 4 points per axis, lower degree otherwise, no smoothing: it passes through every
grid value) and evaluated at points clipped to the grid's extent (constant
extrapolation outside it).
"""
import numpy as np
from scipy.interpolate import RectBivariateSpline

OUTSIDE = 1e6


# -- squared Euclidean distance transform ---------------------------------------------
def distance_transform(f, beta=1.0, axis=-1):
    """``d[..., p, ...] = min_q f[..., q, ...] + beta * (p - q)**2`` along ``axis``.

    The lower envelope of parabolas (Felzenszwalb & Huttenlocher), run on every line of
    ``f`` along ``axis`` at once: the lines advance in lockstep and each pops its own
    envelope, so the work is linear in the line length per line.  ``beta > 0``; ``f``
    must be finite.  Returns float64 ``d`` of ``f``'s shape.
    """
    if beta <= 0:
        raise ValueError("distance_transform: beta must be > 0")
    f = np.moveaxis(np.asarray(f, np.float64), axis, -1)
    shape = f.shape
    n = shape[-1]
    f = f.reshape(-1, n)
    lines = f.shape[0]
    rows = np.arange(lines)
    v = np.zeros((lines, n), np.int64)          # parabola vertices of the envelope
    z = np.empty((lines, n + 1))                # boundaries between them
    k = np.zeros(lines, np.int64)
    z[:, 0], z[:, 1] = -np.inf, np.inf
    g = f / beta                                # work with beta = 1, scale back at the end
    for q in range(1, n):
        fq = g[:, q] + q * q
        active = np.ones(lines, bool)
        s = np.empty(lines)
        while True:
            vk = v[rows, k]
            s_now = (fq - (g[rows, vk] + vk * vk)) / (2.0 * (q - vk))
            s = np.where(active, s_now, s)
            pop = active & (s <= z[rows, k])
            if not pop.any():
                break
            k = np.where(pop, k - 1, k)
            active = pop
        k = k + 1
        v[rows, k] = q
        z[rows, k] = s
        z[rows, k + 1] = np.inf
    d = np.empty((lines, n))
    k = np.zeros(lines, np.int64)
    for q in range(n):
        while True:
            move = z[rows, k + 1] < q
            if not move.any():
                break
            k = k + move
        vk = v[rows, k]
        d[:, q] = beta * ((q - vk) ** 2 + g[rows, vk])
    return np.moveaxis(d.reshape(shape), -1, axis)


def distance_transform_brute(f, beta=1.0, axis=-1):
    """The same minimum by brute force (O(n^2) per line), for tests."""
    f = np.moveaxis(np.asarray(f, np.float64), axis, -1)
    n = f.shape[-1]
    idx = np.arange(n)
    cost = beta * (idx[:, None] - idx[None, :]) ** 2      # [p, q]
    d = (f[..., None, :] + cost).min(-1)
    return np.moveaxis(d, -1, axis)


# -- the MRF -----------------------------------------------------------------------
def data_costs(fs, ft, radius):
    """Unary costs ``D[y, x, a, b] = ||f_s(y, x) - f_t(y + a - R, x + b - R)||_2``.

    ``fs`` ``(C, hs, ws)``, ``ft`` ``(C, ht, wt)``; displacements leaving the target grid
    cost ``OUTSIDE``.  Returns float64 ``(hs, ws, 2R+1, 2R+1)``.
    """
    fs = np.asarray(fs, np.float64)
    ft = np.asarray(ft, np.float64)
    _, hs, ws = fs.shape
    _, ht, wt = ft.shape
    size = 2 * radius + 1
    D = np.full((hs, ws, size, size), OUTSIDE)
    for a in range(size):
        dy = a - radius
        y0, y1 = max(0, -dy), min(hs, ht - dy)
        if y0 >= y1:
            continue
        for b in range(size):
            dx = b - radius
            x0, x1 = max(0, -dx), min(ws, wt - dx)
            if x0 >= x1:
                continue
            diff = fs[:, y0:y1, x0:x1] - ft[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx]
            D[y0:y1, x0:x1, a, b] = np.sqrt((diff * diff).sum(0))
    return D


def energy(D, labels, beta, radius):
    """E of a labelling ``labels (h, w, 2)`` (displacements in cells) under unaries ``D``."""
    labels = np.asarray(labels)
    h, w = labels.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    data = D[yy, xx, labels[..., 0] + radius, labels[..., 1] + radius].sum()
    return float(data + deformation(labels, beta))


def deformation(labels, beta):
    """The smoothness term ``beta * sum_{p~q} ||w(p) - w(q)||^2`` (4-neighbourhood)."""
    labels = np.asarray(labels, np.float64)
    vertical = ((labels[1:] - labels[:-1]) ** 2).sum()
    horizontal = ((labels[:, 1:] - labels[:, :-1]) ** 2).sum()
    return float(beta * (vertical + horizontal))


def _message(h, beta):
    """min over the sender's label of h + beta ||l - l'||^2, both label axes, normalised."""
    m = distance_transform(distance_transform(h, beta, axis=-2), beta, axis=-1)
    return m - m.min(axis=(-2, -1), keepdims=True)


def belief_propagation(D, beta, iterations=None):
    """Min-sum loopy BP on the 4-connected grid of ``D (h, w, L, L)``.

    Returns ``(labels (h, w, 2) int in [-R, R], beliefs (h, w, L, L))``.  ``iterations``
    defaults to ``h + w`` (at least the grid's diameter, so that chains and trees are
    solved exactly); every iteration updates all messages in all four directions
    synchronously.
    """
    D = np.asarray(D, np.float64)
    h, w, L, _ = D.shape
    radius = (L - 1) // 2
    if iterations is None:
        iterations = h + w
    # incoming messages at each node, from the neighbour above / below / left / right
    up, down, left, right = (np.zeros_like(D) for _ in range(4))
    for _ in range(iterations):
        total = D + up + down + left + right
        new_up, new_down = np.zeros_like(D), np.zeros_like(D)
        new_left, new_right = np.zeros_like(D), np.zeros_like(D)
        if h > 1:
            # node (y, x) sends downwards to (y+1, x): everything except what came from below
            new_up[1:] = _message((total - down)[:-1], beta)
            new_down[:-1] = _message((total - up)[1:], beta)
        if w > 1:
            new_left[:, 1:] = _message((total - right)[:, :-1], beta)
            new_right[:, :-1] = _message((total - left)[:, 1:], beta)
        up, down, left, right = new_up, new_down, new_left, new_right
    beliefs = D + up + down + left + right
    flat = beliefs.reshape(h, w, -1).argmin(-1)
    labels = np.stack([flat // L, flat % L], -1) - radius
    return labels.astype(np.int64), beliefs


def exhaustive_minimum(D, beta):
    """Brute-force minimiser of E over all labellings (tiny grids only, for tests)."""
    import itertools
    h, w, L, _ = D.shape
    radius = (L - 1) // 2
    choices = [(a, b) for a in range(-radius, radius + 1) for b in range(-radius, radius + 1)]
    best, best_labels = np.inf, None
    for combo in itertools.product(choices, repeat=h * w):
        labels = np.array(combo).reshape(h, w, 2)
        e = energy(D, labels, beta, radius)
        if e < best:
            best, best_labels = e, labels
    return best_labels, best


class Flow:
    """The result of :func:`convnet_flow`: labels, energies and the grids' centres."""

    def __init__(self, labels, data_energy, deformation_energy, source_centres, target_centres):
        self.labels = labels                          # (h, w, 2) cells, (dy, dx)
        self.data_energy = data_energy
        self.deformation_energy = deformation_energy
        self.energy = data_energy + deformation_energy
        self.source_centres = source_centres          # (cy (h,), cx (w,)) pixels
        self.target_centres = target_centres

    def displacement_pixels(self):
        """``(dy, dx)`` fields in pixels: ``c_t[i + w(i)] - c_s[i]`` per axis, ``(h, w)`` each."""
        (sy, sx), (ty, tx) = self.source_centres, self.target_centres
        h, w = self.labels.shape[:2]
        iy = np.arange(h)[:, None] + self.labels[..., 0]
        ix = np.arange(w)[None, :] + self.labels[..., 1]
        iy = np.clip(iy, 0, len(ty) - 1)
        ix = np.clip(ix, 0, len(tx) - 1)
        return (np.asarray(ty)[iy] - np.asarray(sy)[:, None],
                np.asarray(tx)[ix] - np.asarray(sx)[None, :])

    def warp_points(self, points):
        """Source image points ``(n, 2)`` as ``(x, y)`` -> their positions in the target."""
        dy, dx = self.displacement_pixels()
        return warp_points(points, self.source_centres[0], self.source_centres[1], dy, dx)


def _spline(cy, cx, values):
    ky = min(3, len(cy) - 1)
    kx = min(3, len(cx) - 1)
    return RectBivariateSpline(cy, cx, values, kx=kx, ky=ky, s=0)


def warp_points(points, cy, cx, dy, dx):
    """Move points ``(n, 2)`` given as ``(x, y)`` by the displacement fields ``dy, dx``
    sampled on the grid ``cy (h,) x cx (w,)`` (pixels), interpolated with bivariate
    splines; points outside the grid take the value at the nearest grid edge."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    cy = np.asarray(cy, np.float64)
    cx = np.asarray(cx, np.float64)
    dy = np.asarray(dy, np.float64)
    dx = np.asarray(dx, np.float64)
    if len(points) == 0:
        return points.copy()
    x = np.clip(points[:, 0], cx[0], cx[-1])
    y = np.clip(points[:, 1], cy[0], cy[-1])

    def interpolate(field):
        if len(cy) == 1 and len(cx) == 1:
            return np.full(len(points), field[0, 0])
        if len(cy) == 1:
            return np.interp(x, cx, field[0])
        if len(cx) == 1:
            return np.interp(y, cy, field[:, 0])
        return _spline(cy, cx, field).ev(y, x)

    return np.stack([points[:, 0] + interpolate(dx), points[:, 1] + interpolate(dy)], -1)


def convnet_flow(source, target, beta, radius=4, iterations=None):
    """Flow from ``source`` to ``target``, each ``(features (C, h, w), cy (h,), cx (w,))``.

    Returns a :class:`Flow` whose ``labels[y, x]`` is the displacement (cells) of source
    grid point ``(y, x)`` in the target grid.
    """
    fs, sy, sx = source
    ft, ty, tx = target
    D = data_costs(fs, ft, radius)
    labels, _ = belief_propagation(D, beta, iterations)
    total = energy(D, labels, beta, radius)
    deform = deformation(labels, beta)
    return Flow(labels, total - deform, deform, (np.asarray(sy), np.asarray(sx)),
                (np.asarray(ty), np.asarray(tx)))


# -- keypoint transfer (Table 2.2) ---------------------------------------------------------
def cosine_neighbours(query, candidates, k):
    """Indices of the ``k`` candidates most cosine-similar to ``query`` (best first)."""
    if len(candidates) == 0:
        return []
    c = np.asarray(candidates, np.float64)
    q = np.asarray(query, np.float64)
    sims = c @ q / (np.linalg.norm(c, axis=1) * np.linalg.norm(q) + 1e-12)
    return list(np.argsort(-sims, kind="stable")[:k])


def median_keypoints(candidates, names, top=5):
    """Per name, the coordinate-wise median of the first ``top`` candidates in which it is
    visible; ``candidates`` is an ordered list of ``{name: (x, y, visible)}``; None when
    no candidate shows the keypoint."""
    result = {}
    for name in names:
        points = [(x, y) for c in candidates for n, (x, y, v) in c.items() if n == name and v][:top]
        result[name] = tuple(np.median(np.asarray(points), axis=0)) if points else None
    return result


def transfer_keypoints(target, sources, beta, radius=4, top=5, iterations=None, order="deformation"):
    """Transfer keypoints to ``target`` (a grid ``(F, cy, cx)``) from ``sources``:
    ``[(grid, {name: (x, y, visible)})]`` in the sources' own pixel coordinates (the same
    box frame as the target's).  Each source is aligned to the target by
    :func:`convnet_flow`, its keypoints are warped, the sources are ordered by
    ``order`` ("deformation": the smoothness energy, as the thesis found best; "data";
    "energy": both) and every keypoint is the median of its first ``top`` warped
    positions.  Returns ``({name: (x, y) or None}, [Flow, ...] in the chosen order)``.
    """
    warped, flows = [], []
    for grid, keypoints in sources:
        flow = convnet_flow(grid, target, beta, radius, iterations)
        names = list(keypoints)
        moved = flow.warp_points([keypoints[n][:2] for n in names]) if names else np.zeros((0, 2))
        warped.append({n: (float(p[0]), float(p[1]), keypoints[n][2]) for n, p in zip(names, moved)})
        flows.append(flow)
    key = {"deformation": lambda f: f.deformation_energy, "data": lambda f: f.data_energy,
           "energy": lambda f: f.energy}[order]
    ranking = sorted(range(len(flows)), key=lambda i: key(flows[i]))
    names = []
    for _, keypoints in sources:
        names += [n for n in keypoints if n not in names]
    return median_keypoints([warped[i] for i in ranking], names, top), [flows[i] for i in ranking]


def auto_beta(grids, scale=0.05, pairs=20):
    """``scale`` times the median L2 distance between features at the same grid position
    of consecutive grids (a feature-scale-free choice of beta; the thesis's 3e-3 was for
    raw conv4 and SIFT vectors)."""
    distances = []
    for (a, _, _), (b, _, _) in zip(grids[:pairs], grids[1:pairs + 1]):
        h, w = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2])
        distances.append(np.sqrt(((a[:, :h, :w] - b[:, :h, :w]) ** 2).sum(0)).ravel())
    if not distances:
        return 1.0
    value = float(np.median(np.concatenate(distances)))
    return scale * value if value > 0 else 1.0


def flow_experiment(extractor, layer, targets, sources, neighbours, size=64, beta=None, radius=4,
                    top=5, iterations=None, order="deformation", no_flow=False):
    """Keypoint transfer to every target instance from its neighbour sources.

    ``neighbours[i]``: indices into ``sources`` (best first; same category) for
    ``targets[i]``.  Instances are rescaled to ``size x size`` boxes; predictions come
    back in image coordinates.  ``no_flow``: copy the neighbours' keypoints unwarped
    (the "NN transfer" row), ordered by neighbour rank.  Returns
    ``(predictions [{name: (x, y) or None}], beta used)``.
    """
    from .extract import to_box, to_image
    if beta is None and not no_flow:
        beta = auto_beta([extractor.box(s, size)[layer] for s in sources[:21]])
    predictions = []
    for target, nbrs in zip(targets, neighbours):
        boxed = []
        for j in nbrs:
            s = sources[j]
            names = list(s.keypoints)
            pts = to_box([s.keypoints[n][:2] for n in names], s.bbox, size)
            boxed.append({n: (p[0], p[1], s.keypoints[n][2]) for n, p in zip(names, pts)})
        if no_flow:
            names = list(target.keypoints)
            predicted = median_keypoints(boxed, names, top)
        else:
            grid = extractor.box(target, size)[layer]
            predicted, _ = transfer_keypoints(grid, [(extractor.box(sources[j], size)[layer], kp)
                                                     for j, kp in zip(nbrs, boxed)],
                                              beta, radius, top, iterations, order)
        out = {}
        for name, point in predicted.items():
            out[name] = None if point is None else tuple(to_image([point], target.bbox, size)[0])
        predictions.append(out)
    return predictions, beta

"""Regions of a pairwise region net (J. Long's thesis, ch. 4): decoding, grid NMS, upsampling, scoring.

**The region grid.**  A pathway of stride ``s`` and window ``K`` predicts, for every grid
cell ``x = (gy, gx)`` of an ``h x w`` grid, a ``K x K`` window of logits ``p(x, Δ)``: the Caffe
blob ``(N, K*K, h, w)`` holds ``Δ = (i - K//2, j - K//2)`` in channel ``i*K + j``, so window
cell ``(i, j)`` of the region centred at ``(gy, gx)`` is grid cell ``(gy + i - K//2, gx + j - K//2)``.
Grid cell ``(gy, gx)`` is the image pixel block ``[s*gy, s*gy + s) x [s*gx, s*gx + s)`` (plus an
optional pixel ``origin``), so a region covers ``K*s x K*s`` pixels with top-left pixel
``(s*(gy - K//2), s*(gx - K//2))``.  A cell is foreground when its logit is > 0 (probability > 0.5).

**Decoding** (:func:`decode_regions`): one candidate per grid cell, its score the objectness
(a logit, or a 2-channel softmax's foreground probability, ranked the same), its low-resolution
mask the ``K x K`` window thresholded at logit > 0 and clipped to the grid (window cells outside
``[0, h) x [0, w)`` are background); candidates whose clipped mask is empty are dropped.

**NMS on the grid** (:func:`grid_nms`), equal to greedy NMS (:func:`greedy_nms`).  Greedy NMS
visits the regions by decreasing score (ties: lower index first) and keeps a region iff its IoU
with every region kept before it is <= ``threshold``; a kept region suppresses (IoU >
``threshold``) the later ones.  Two regions of one grid whose centres differ by ``K`` or more
cells along either axis have disjoint windows, hence IoU 0 <= threshold: they can never suppress
each other.  So when a region is kept only its ``(2K-1)^2 - 1`` grid neighbours with
``|dy|, |dx| <= K-1`` need an IoU, and the IoU of two regions at grid offset ``(dy, dx)`` is
computed from their ``K x K`` masks alone (``inter = sum m_q[a, b] & m_r[a + dy, b + dx]``),
before any upsampling.  Every decision is the greedy one (the skipped pairs have IoU 0), so
the kept lists are identical, in the same order.  Work: one sort plus at most
``n * ((2K-1)^2 - 1)`` mask comparisons of ``K^2`` cells: linear in the number of regions ``n``
for a fixed window (the ``O(n log n)`` argsort is the only superlinear step; regions have a
fixed grid index, so no spatial search structure is needed).

**Upsampling** (:func:`upsample_logits`, :func:`region_mask`): a kept region's ``K x K``
logits go to ``K*s x K*s`` pixels exactly as FCN's bilinear Deconvolution does it: kernel
``2s - s%2`` (``netspec.surgery.bilinear_kernel``), stride ``s``, zero outside the window, and
the first ``s//2`` outputs cropped (equivalently Deconvolution ``pad: s//2``, which yields exactly
``K*s`` outputs).  Output pixel ``p`` then gets weight ``max(0, 1 - |p + 0.5 - s*(k + 0.5)|/s)``
from window cell ``k``: cell ``k``'s value sits at the centre of its ``s x s`` pixel block
(half-pixel-centred bilinear interpolation, zero padding).  At the window border only one
cell contributes, with positive weight, so the sign, hence the 0.5-probability threshold, is
kept there.  The mask is ``logit > 0`` in image coordinates, clipped to the image.

**Scoring** (:class:`RegionScorer`): per ground-truth instance the best IoU over the top-k
proposals of its image (best overlap, no one-to-one matching, as the thesis defines R@x
and ABO); the instances of all images are pooled: ``R@t`` = fraction with best IoU >= t,
``ABO`` = mean best IoU, ``AR`` = mean of ``R@t`` over ``t = 0.5, 0.55, ..., 0.95`` (Hosang et
al.; COCO's thresholds), ``AR@k`` the same with each image's top k proposals.
"""
import numpy as np

from netspec.errors import NetspecError

#: IoU thresholds of AR: 0.5:0.05:0.95.
AR_THRESHOLDS = np.linspace(0.5, 0.95, 10)
_EPS = 1e-9   # IoU >= t is tested as IoU >= t - eps, so an IoU of exactly 0.7 counts at 0.7


# ---------------------------------------------------------------------------------------------
# decoding

class Regions:
    """Candidate regions of one pathway of one image (parallel arrays over ``n`` regions).

    ``grid`` (n, 2) int grid cell (gy, gx); ``scores`` (n,); ``logits`` (n, K, K) float32;
    ``masks`` (n, K, K) bool (logit > 0, clipped to the grid); ``stride``; ``window`` (K);
    ``grid_shape`` (h, w); ``origin`` (pixel of grid cell (0, 0)'s top-left corner).
    """

    def __init__(self, grid, scores, logits, masks, stride, window, grid_shape, origin=(0, 0), name=None):
        self.grid = np.asarray(grid, np.int64).reshape(-1, 2)
        self.scores = np.asarray(scores, np.float64).reshape(-1)
        self.logits = np.asarray(logits, np.float32)
        self.masks = np.asarray(masks, bool)
        self.stride = int(stride)
        self.window = int(window)
        self.grid_shape = tuple(int(v) for v in grid_shape)
        self.origin = tuple(int(v) for v in origin)
        self.name = name

    def __len__(self):
        return len(self.scores)

    def subset(self, index):
        index = np.asarray(index, np.int64)
        return Regions(self.grid[index], self.scores[index], self.logits[index], self.masks[index],
                       self.stride, self.window, self.grid_shape, self.origin, self.name)

    def box(self, i):
        """Pixel window ``(y0, x0, y1, x1)`` (half-open) of region ``i``, before clipping."""
        s, c = self.stride, self.window // 2
        gy, gx = self.grid[i]
        y0 = self.origin[0] + s * (int(gy) - c)
        x0 = self.origin[1] + s * (int(gx) - c)
        return y0, x0, y0 + s * self.window, x0 + s * self.window

    def centre(self, i):
        """Pixel centre ``(y, x)`` of region ``i``'s grid cell."""
        s = self.stride
        gy, gx = self.grid[i]
        return (self.origin[0] + s * int(gy) + (s - 1) / 2, self.origin[1] + s * int(gx) + (s - 1) / 2)


def window_size(channels):
    """``K`` from a region blob's channel count ``K*K``."""
    k = int(round(np.sqrt(channels)))
    if k * k != channels or k < 1:
        raise NetspecError(f"a region blob has K*K channels (a K x K window), got {channels} channels")
    return k


def objectness_scores(objectness):
    """Per-cell scores from an objectness blob ``(h, w)``, ``(1, h, w)`` (a logit: returned as is)
    or ``(2, h, w)`` (two-class scores: the softmax probability of channel 1)."""
    obj = np.asarray(objectness, np.float64)
    if obj.ndim == 4 and obj.shape[0] == 1:
        obj = obj[0]
    if obj.ndim == 3 and obj.shape[0] == 1:
        obj = obj[0]
    if obj.ndim == 3 and obj.shape[0] == 2:
        return 1.0 / (1.0 + np.exp(obj[0] - obj[1]))
    if obj.ndim != 2:
        raise NetspecError(f"an objectness blob must be (h, w), (1, h, w) or (2, h, w), got shape {obj.shape}")
    return obj


def window_grid_mask(window, grid_shape, gy, gx):
    """Bool ``(n, K, K)``: which window cells of regions centred at (gy, gx) lie on the grid."""
    c = window // 2
    offsets = np.arange(window) - c
    rows = gy[:, None] + offsets[None, :]
    cols = gx[:, None] + offsets[None, :]
    ok_r = (rows >= 0) & (rows < grid_shape[0])
    ok_c = (cols >= 0) & (cols < grid_shape[1])
    return ok_r[:, :, None] & ok_c[:, None, :]


def decode_regions(logits, objectness, stride, origin=(0, 0), name=None, min_score=None, keep_empty=False):
    """Candidate regions from one pathway's outputs for one image.

    ``logits`` (K*K, h, w) (or (1, K*K, h, w)); ``objectness`` as :func:`objectness_scores`
    takes it, on the same ``h x w`` grid.  Returns :class:`Regions`, one per grid cell whose
    clipped mask is not empty (all cells with ``keep_empty``) and whose score is >= ``min_score``.
    """
    logits = np.asarray(logits, np.float32)
    if logits.ndim == 4 and logits.shape[0] == 1:
        logits = logits[0]
    if logits.ndim != 3:
        raise NetspecError(f"a region blob must be (K*K, h, w), got shape {logits.shape}")
    if int(stride) < 1:
        raise NetspecError(f"a pathway stride must be a positive integer, got {stride}")
    k = window_size(logits.shape[0])
    h, w = logits.shape[1:]
    scores = objectness_scores(objectness)
    if scores.shape != (h, w):
        raise NetspecError(f"the objectness grid is {scores.shape[0]}x{scores.shape[1]} but the region grid "
                           f"{h}x{w}; they must come from the same pathway")
    gy, gx = np.divmod(np.arange(h * w), w)
    windows = logits.reshape(k, k, h * w).transpose(2, 0, 1)             # (n, K, K), [n, i, j]
    masks = (windows > 0) & window_grid_mask(k, (h, w), gy, gx)
    keep = np.ones(h * w, bool) if keep_empty else masks.reshape(h * w, -1).any(axis=1)
    flat_scores = scores.reshape(-1)
    if min_score is not None:
        keep &= flat_scores >= min_score
    index = np.flatnonzero(keep)
    return Regions(np.stack([gy[index], gx[index]], axis=1), flat_scores[index], windows[index],
                   masks[index], stride, k, (h, w), origin, name)


# ---------------------------------------------------------------------------------------------
# NMS

def _check_threshold(threshold):
    if not 0.0 <= float(threshold) <= 1.0:
        raise NetspecError(f"the NMS IoU threshold must be in [0, 1], got {threshold}")


def _order(scores):
    """Decreasing score, ties by increasing index (both NMS implementations use it)."""
    return np.lexsort((np.arange(len(scores)), -np.asarray(scores, np.float64)))


def grid_nms(grid, masks, scores, threshold):
    """Greedy NMS of regions on one regular grid, in time linear in the number of regions.

    ``grid`` (n, 2) distinct integer grid cells; ``masks`` (n, K, K) bool low-resolution masks
    (window cell (i, j) at grid cell ``grid + (i, j) - K//2``); ``scores`` (n,).  A region is
    suppressed by a kept one when their IoU is > ``threshold``.  Returns the kept indices in
    decreasing score order: exactly :func:`greedy_nms`'s result (see the module docstring).
    """
    _check_threshold(threshold)
    grid = np.asarray(grid, np.int64).reshape(-1, 2)
    masks = np.asarray(masks, bool)
    n = len(grid)
    if n == 0:
        return np.zeros(0, np.int64)
    k = masks.shape[-1]
    if masks.shape != (n, k, k):
        raise NetspecError(f"grid_nms: masks must be (n, K, K) for {n} regions, got {masks.shape}")
    lo = grid.min(axis=0)
    extent = grid.max(axis=0) - lo + 1
    cell = np.full(tuple(extent + 2 * (k - 1)), -1, np.int64)            # region index per grid cell, -1 none
    pos = grid - lo + (k - 1)
    cell[pos[:, 0], pos[:, 1]] = np.arange(n)
    if (cell >= 0).sum() != n:
        raise NetspecError("grid_nms: two regions share a grid cell; run NMS per pathway")
    order = _order(scores)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    areas = masks.reshape(n, -1).sum(axis=1)
    suppressed = np.zeros(n, bool)
    kept = []
    span = 2 * k - 1
    for r in order:
        if suppressed[r]:
            continue
        kept.append(r)
        y, x = pos[r]
        hood = cell[y - k + 1:y + k, x - k + 1:x + k]                       # (2K-1, 2K-1) neighbourhood
        dy, dx = np.nonzero(hood >= 0)
        q = hood[dy, dx]
        live = (rank[q] > rank[r]) & ~suppressed[q]
        if not live.any():
            continue
        q, dy, dx = q[live], dy[live], dx[live]                            # offsets dy - (K-1) etc.
        canvas = np.zeros((3 * k - 2, 3 * k - 2), bool)
        canvas[k - 1:2 * k - 1, k - 1:2 * k - 1] = masks[r]
        views = np.lib.stride_tricks.sliding_window_view(canvas, (k, k))  # views[u, v] = canvas[u:u+K, v:v+K]
        assert views.shape[:2] == (span, span)
        inter = (views[dy, dx] & masks[q]).reshape(len(q), -1).sum(axis=1)
        union = areas[r] + areas[q] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        suppressed[q[iou > threshold]] = True
    return np.asarray(kept, np.int64)


def greedy_nms(masks, scores, threshold):
    """The quadratic reference: greedy NMS of ``masks`` (n, ...) bool in any common frame."""
    _check_threshold(threshold)
    masks = np.asarray(masks, bool)
    n = len(masks)
    if n == 0:
        return np.zeros(0, np.int64)
    flat = masks.reshape(n, -1)
    order = _order(scores)
    suppressed = np.zeros(n, bool)
    kept = []
    for position, r in enumerate(order):
        if suppressed[r]:
            continue
        kept.append(r)
        rest = order[position + 1:]
        rest = rest[~suppressed[rest]]
        if len(rest):
            iou = mask_iou(flat[r][None], flat[rest])[0]
            suppressed[rest[iou > threshold]] = True
    return np.asarray(kept, np.int64)


def grid_canvas_masks(regions):
    """All of ``regions``' low-resolution masks placed on one grid canvas ``(n, h + K-1, w + K-1)``
    (cell (gy, gx) at canvas (gy + K//2, gx + K//2)), e.g. for :func:`greedy_nms`."""
    k = regions.window
    h, w = regions.grid_shape
    out = np.zeros((len(regions), h + k - 1, w + k - 1), bool)
    for i, (gy, gx) in enumerate(regions.grid):
        out[i, gy:gy + k, gx:gx + k] = regions.masks[i]
    return out


# ---------------------------------------------------------------------------------------------
# upsampling

def bilinear_matrix(cells, stride):
    """``(cells*s, cells)``: row p holds the weights of the window cells for output pixel p
    (FCN's bilinear Deconvolution, kernel 2s - s%2, stride s, crop s//2)."""
    s = int(stride)
    p = np.arange(cells * s, dtype=np.float64)[:, None]
    k = np.arange(cells, dtype=np.float64)[None, :]
    return np.maximum(0.0, 1.0 - np.abs(p + 0.5 - s * (k + 0.5)) / s)


def upsample_logits(window_logits, stride):
    """``(K, K)`` logits -> ``(K*s, K*s)`` by the bilinear Deconvolution above."""
    window_logits = np.asarray(window_logits, np.float64)
    k = window_logits.shape[-1]
    u = bilinear_matrix(k, stride)
    return u @ window_logits @ u.T


def region_mask(regions, i, image_shape):
    """Region ``i`` of ``regions`` as a bool mask ``(H, W)`` of the image (logit > 0, clipped)."""
    height, width = image_shape
    up = upsample_logits(regions.logits[i], regions.stride)
    y0, x0, y1, x1 = regions.box(i)
    out = np.zeros((height, width), bool)
    cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
    if cy0 < cy1 and cx0 < cx1:
        out[cy0:cy1, cx0:cx1] = up[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] > 0
    return out


# ---------------------------------------------------------------------------------------------
# IoU and scoring

def mask_iou(a, b, chunk=1 << 22):
    """IoU matrix ``(len(a), len(b))`` of bool masks of one shape (``(n, H, W)`` or ``(n, P)``);
    0 where both masks are empty.  Exact bit counts: packed bits, ``bitwise_and`` and a
    population count, ``chunk`` bytes of ``b`` at a time."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    a = a.reshape(len(a), int(np.prod(a.shape[1:], dtype=np.int64)))
    b = b.reshape(len(b), int(np.prod(b.shape[1:], dtype=np.int64)))
    if a.shape[1] != b.shape[1]:
        raise NetspecError(f"mask_iou: masks of {a.shape[1]} and {b.shape[1]} pixels; they must be the same size")
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    pa, pb = np.packbits(a, axis=1), np.packbits(b, axis=1)
    inter = np.empty((len(a), len(b)), np.int64)
    step = max(1, chunk // max(pa.shape[1] * len(a), 1))
    for start in range(0, len(b), step):
        both = pa[:, None, :] & pb[None, start:start + step, :]
        inter[:, start:start + step] = np.bitwise_count(both).sum(axis=2, dtype=np.int64)
    union = a.sum(axis=1)[:, None] + b.sum(axis=1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def encode_masks(masks):
    """pycocotools RLEs of bool masks ``(n, H, W)``."""
    from pycocotools import mask as mask_utils
    masks = np.asarray(masks, np.uint8)
    if len(masks) == 0:
        return []
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))


def rle_iou(a, b):
    """IoU matrix of two lists of pycocotools RLEs (or ``(n, H, W)`` bool arrays), as :func:`mask_iou`."""
    from pycocotools import mask as mask_utils
    a = encode_masks(a) if isinstance(a, np.ndarray) else list(a)
    b = encode_masks(b) if isinstance(b, np.ndarray) else list(b)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return np.asarray(mask_utils.iou(a, b, [0] * len(b)), np.float64).reshape(len(a), len(b))


def best_overlaps_from_iou(iou, ks=(10, 100, 1000)):
    """From an IoU matrix ``(m ground truth, n proposals best first)``: per instance the best IoU
    over the top-k proposals for each k in ``ks`` and over all: ``{k: (m,), None: (m,)}``."""
    iou = np.asarray(iou, np.float64)
    m, n = iou.shape
    running = np.maximum.accumulate(iou, axis=1) if n else iou
    out = {}
    for k in (*ks, None):
        upto = n if k is None else min(int(k), n)
        out[k] = running[:, upto - 1].copy() if upto > 0 else np.zeros(m)
    return out


def best_overlaps(gt_masks, proposal_masks, ks=(10, 100, 1000)):
    """:func:`best_overlaps_from_iou` of bool masks ``(m, H, W)`` and ``(n, H, W)``."""
    return best_overlaps_from_iou(mask_iou(gt_masks, proposal_masks), ks)


def recall_at(best, threshold):
    best = np.asarray(best, np.float64)
    return float((best >= threshold - _EPS).mean()) if best.size else float("nan")


def average_recall(best, thresholds=AR_THRESHOLDS):
    return float(np.mean([recall_at(best, t) for t in thresholds])) if np.size(best) else float("nan")


class RegionScorer:
    """Accumulates proposal metrics over images, pooling all ground-truth instances.

    ``add(gt_masks, proposal_masks)`` per image (``(m, H, W)`` bool ground truth, crowd/void
    regions left out; ``(n, H, W)`` bool proposals, best first); ``summary()`` gives R@50, R@70,
    ABO, AR (all proposals) and AR@k for each k in ``ks``, as fractions in [0, 1].
    """

    def __init__(self, ks=(10, 100, 1000)):
        self.ks = tuple(int(k) for k in ks)
        self.best = {k: [] for k in (*self.ks, None)}
        self.images = 0

    def add_iou(self, iou):
        """One image from its IoU matrix ``(m ground truth, n proposals best first)``."""
        iou = np.asarray(iou, np.float64)
        if iou.ndim != 2:
            raise NetspecError(f"RegionScorer.add_iou: the IoU matrix must be (m, n), got shape {iou.shape}")
        self.images += 1
        best = best_overlaps_from_iou(iou, self.ks)
        for k, values in best.items():
            self.best[k].append(values)
        return best

    def add(self, gt_masks, proposal_masks):
        gt_masks = np.asarray(gt_masks, bool)
        proposal_masks = np.asarray(proposal_masks, bool)
        if gt_masks.ndim != 3 or proposal_masks.ndim != 3:
            raise NetspecError("RegionScorer.add: masks must be (count, H, W)")
        if len(proposal_masks) and gt_masks.shape[1:] != proposal_masks.shape[1:]:
            raise NetspecError(f"RegionScorer.add: ground truth is {gt_masks.shape[1:]} but proposals "
                               f"{proposal_masks.shape[1:]}")
        if len(proposal_masks) == 0:
            proposal_masks = np.zeros((0, *gt_masks.shape[1:]), bool)
        return self.add_iou(mask_iou(gt_masks, proposal_masks))

    def pooled(self, k=None):
        parts = self.best[k]
        return np.concatenate(parts) if parts else np.zeros(0)

    def summary(self):
        best = self.pooled(None)
        out = {"images": self.images, "instances": int(best.size),
               "R@50": recall_at(best, 0.5), "R@70": recall_at(best, 0.7),
               "ABO": float(best.mean()) if best.size else float("nan"), "AR": average_recall(best)}
        for k in self.ks:
            out[f"AR@{k}"] = average_recall(self.pooled(k))
        return out


def score_regions(gt_per_image, proposals_per_image, ks=(10, 100, 1000)):
    """:class:`RegionScorer` over lists of per-image ``(gt_masks, proposal_masks)``."""
    scorer = RegionScorer(ks)
    for gt, proposals in zip(gt_per_image, proposals_per_image):
        scorer.add(gt, proposals)
    return scorer.summary()

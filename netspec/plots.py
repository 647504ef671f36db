"""The pictures: training curves, prediction panels, confusion matrices (matplotlib, headless).

- :func:`training_curve` — a parsed Caffe-format log (:mod:`netspec.training_log`) or its path
  -> train loss (raw thin, smoothed thick), test losses, test outputs (accuracy, mean IU, ...)
  and the learning rate, each on its own axes;
- :func:`prediction_panels` — rows of image | ground truth | prediction | overlay with a legend
  of the classes present (VOC palette and class names by default);
- :func:`confusion_matrix`, :func:`per_class_iu`, :func:`score_figures` — from a confusion
  histogram (:func:`netspec.score.fast_hist`).

Every function draws on its own ``matplotlib.figure.Figure`` with the Agg canvas and
writes a PNG; pyplot is never imported, so nothing leaks into (or out of) a user's
pyplot state.
"""
import math
import os
import sys

import matplotlib

if "matplotlib.pyplot" not in sys.modules:      # headless; leave a user's interactive backend alone
    matplotlib.use("Agg")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import numpy as np  # noqa: E402

from .errors import NetspecError  # noqa: E402
from .training_log import SEGMENTATION_METRICS, TrainingLog, parse_log  # noqa: E402

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
VOID = 255
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
            "#bcbd22", "#7f7f7f")
_METRIC_LABELS = {"pixel_acc": "pixel accuracy", "mean_acc": "mean accuracy", "mean_iu": "mean IU",
                  "fwavacc": "f.w. IU"}
_STYLE = {"font.size": 13, "axes.titlesize": 15, "axes.labelsize": 13, "legend.fontsize": 11,
          "xtick.labelsize": 11, "ytick.labelsize": 11}


def voc_palette_array():
    """The VOC label palette as a ``(256, 3)`` uint8 array."""
    from .data.synthetic import voc_palette
    return np.asarray(voc_palette(), np.uint8).reshape(256, 3)


def palette_array(palette=None):
    """A palette (None: VOC; a flat PIL list; an ``(N, 3)`` array) as a ``(256, 3)`` uint8 array."""
    if palette is None:
        return voc_palette_array()
    p = np.asarray(palette, np.int64).reshape(-1, 3)
    out = np.zeros((256, 3), np.int64)
    out[:min(256, len(p))] = p[:256]
    if len(p) <= VOID:                       # keep VOC's void colour for 255 when the palette is short
        out[VOID] = voc_palette_array()[VOID]
    return out.clip(0, 255).astype(np.uint8)


def default_class_names(n):
    """VOC's names for 21 classes, else ``class i``."""
    return list(VOC_CLASSES) if n == len(VOC_CLASSES) else [f"class {i}" for i in range(n)]


def read_class_names(path):
    """One class name a line (e.g. a dataset's ``classes.txt``)."""
    try:
        with open(path) as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise NetspecError(f"{path}: cannot read class names ({e.strerror or e})") from None
    if not names:
        raise NetspecError(f"{path}: no class names (one a line)")
    return names


def _name(class_names, index):
    if index == VOID:
        return "void"
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return f"class {index}"


def _save(fig, path, dpi):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    FigureCanvasAgg(fig)
    try:
        fig.savefig(path, dpi=dpi)
    except OSError as e:
        raise NetspecError(f"{path}: cannot write the picture ({e.strerror or e})") from None
    return path


def _hex(rgb):
    return "#%02x%02x%02x" % tuple(int(c) for c in rgb)


# ------------------------------------------------------------------ training curves

def _finite(xs, ys):
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _moving_mean(values, window):
    values = np.asarray(values, np.float64)
    if window <= 1 or len(values) < 2:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(len(values)):                  # trailing window, shorter at the start (like Caffe's)
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def _spans(values, decades):
    v = [x for x in values if x > 0 and math.isfinite(x)]
    return len(v) == len([x for x in values if math.isfinite(x)]) and len(v) > 1 and max(v) / min(v) > 10 ** decades


def _train_series(log):
    """(raw its, raw values, thick its, thick values, thin label, thick label)."""
    rows = log.train
    raw_i, raw_v = _finite([r["iteration"] for r in rows], [r["loss"] for r in rows])
    sm_i, sm_v = _finite([r["iteration"] for r in rows], [r["smoothed_loss"] for r in rows])
    pairs = [(r["loss"], r["smoothed_loss"]) for r in rows
             if math.isfinite(r["loss"]) and math.isfinite(r["smoothed_loss"])]
    smoothing_shown = bool(pairs) and any(abs(a - b) > 1e-5 * max(1.0, abs(a)) for a, b in pairs)
    if smoothing_shown:
        return raw_i, raw_v, sm_i, sm_v, "train loss (that iteration)", "train loss (smoothed, as displayed)"
    its, vals = (raw_i, raw_v) if len(raw_v) >= len(sm_v) else (sm_i, sm_v)
    window = max(2, min(50, round(len(vals) / 15)))
    label = "train loss" + (" (as displayed)" if not raw_v else "")
    return its, vals, its, list(_moving_mean(vals, window)), label, f"moving mean of {window} displays"


def training_curve(parsed, path, title=None, size=(16, 10), dpi=100):
    """Draw the curves of a :class:`TrainingLog` (or a log file's path) into the PNG ``path``.

    Train loss raw (thin) and smoothed (thick; a moving mean when the log shows no
    smoothing), test losses, test outputs and segmentation metrics, learning rate;
    log scales where the loss spans more than two decades or the rate more than one.
    ``size`` is in inches at ``dpi`` (default 1600x1000 px).
    """
    log = parsed if isinstance(parsed, TrainingLog) else parse_log(parsed)
    raw_i, raw_v, thick_i, thick_v, thin_label, thick_label = _train_series(log)
    nets = log.test_nets
    test_losses = {k: _finite([r["iteration"] for r in log.test.get(k, [])],
                              [r["loss"] for r in log.test.get(k, [])]) for k in nets}
    test_losses = {k: v for k, v in test_losses.items() if v[1]}
    metrics = []                                # (label, its, values, style)
    for k in nets:
        loss_names = set(log.test_loss_names.get(k, []))
        rows = log.test_outputs.get(k, [])
        names = []
        for r in rows:
            names += [n for n in r if n != "iteration" and n not in names and n not in loss_names]
        for n in names:
            its, vals = _finite(*TrainingLog.column(rows, n))
            if vals:
                metrics.append((f"test #{k} {n}", its, vals, "test"))
        seg = log.segmentation.get(k, [])
        for m in SEGMENTATION_METRICS:
            its, vals = _finite(*TrainingLog.column(seg, m))
            if vals:
                metrics.append((f"test #{k} {_METRIC_LABELS[m]}", its, vals, "test"))
    train_metric_names = []
    for r in log.train_outputs:
        train_metric_names += [n for n in r if n != "iteration" and n not in train_metric_names
                               and n not in log.train_loss_names]
    for n in train_metric_names:
        its, vals = _finite(*TrainingLog.column(log.train_outputs, n))
        if vals:
            metrics.append((f"train {n}", its, vals, "train"))
    lr_i, lr_v = _finite([r["iteration"] for r in log.train], [r["lr"] for r in log.train])

    panels = ["loss"] + (["metrics"] if metrics else []) + (["lr"] if lr_v else [])
    ratios = {"loss": 3.0, "metrics": 2.0, "lr": 1.1}
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=size, dpi=dpi, layout="constrained")
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False,
                            gridspec_kw={"height_ratios": [ratios[p] for p in panels]})[:, 0]
        ax = dict(zip(panels, axes))
        a = ax["loss"]
        if raw_v:
            a.plot(raw_i, raw_v, color=_COLOURS[0], lw=0.8, alpha=0.45, label=thin_label)
            a.plot(thick_i, thick_v, color=_COLOURS[0], lw=2.6,
                   label=f"{thick_label} (last {thick_v[-1]:.4g})")
        for j, (k, (its, vals)) in enumerate(sorted(test_losses.items())):
            a.plot(its, vals, color=_COLOURS[(j + 1) % len(_COLOURS)], lw=2.0, ls="--",
                   marker="o" if len(vals) <= 60 else None, ms=5,
                   label=f"test #{k} loss (last {vals[-1]:.4g}, best {min(vals):.4g})")
        losses = list(raw_v) + list(thick_v) + [v for _, vals in test_losses.values() for v in vals]
        if _spans(losses, 2):
            a.set_yscale("log")
        a.set_ylabel("loss")
        a.set_title("loss")
        if not losses:
            a.text(0.5, 0.5, "no loss in the log", ha="center", va="center", transform=a.transAxes)
        if raw_v or test_losses:
            a.legend(loc="best")
        if "metrics" in ax:
            a = ax["metrics"]
            styles, used = ("-", "-.", ":", (0, (5, 1, 1, 1))), {}
            for label, its, vals, kind in metrics:
                net = label.split()[1] if kind == "test" else "train"
                j = used[net] = used.get(net, -1) + 1
                colour = _COLOURS[(int(net[1:]) + 1) % len(_COLOURS)] if kind == "test" else "#7f7f7f"
                if j >= len(styles):                     # many outputs: new colours too
                    colour = _COLOURS[(j + 4) % len(_COLOURS)]
                if kind == "train":
                    a.plot(its, vals, color=colour, lw=1.0, alpha=0.6, label=f"{label} (last {vals[-1]:.4g})")
                else:
                    a.plot(its, vals, color=colour, lw=2.0, ls=styles[j % len(styles)],
                           marker="o" if len(vals) <= 60 else None, ms=5,
                           label=f"{label} (last {vals[-1]:.4g}, max {max(vals):.4g})")
            a.set_ylabel("value")
            a.set_title("test outputs" + (" and train outputs" if train_metric_names else ""))
            a.legend(loc="best")
        if "lr" in ax:
            a = ax["lr"]
            a.plot(lr_i, lr_v, color="#444444", lw=2.0, drawstyle="steps-post")
            if _spans(lr_v, 1):
                a.set_yscale("log")
            a.set_ylabel("learning rate")
        for a in axes:
            a.grid(True, which="major", alpha=0.35)
        axes[-1].set_xlabel("iteration")
        last = max([r["iteration"] for r in log.train] + [its[-1] for _, (its, _) in test_losses.items()] or [0])
        fig.suptitle(title or f"{os.path.basename(log.path)}: {last} iterations", fontsize=17)
        return _save(fig, path, dpi)


# ------------------------------------------------------------------ prediction panels

def _rgb(image):
    if hasattr(image, "convert"):                                # a PIL image
        image = image.convert("RGB")
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.dtype != np.uint8:
        a = np.asarray(a, np.float64).clip(0, 255).astype(np.uint8)
    return a[:, :, :3]


def _row(row):
    """``(image, label or None, prediction, title)`` of a panel row."""
    if isinstance(row, dict):
        return row["image"], row.get("label"), row["prediction"], row.get("title")
    row = tuple(row)
    if len(row) == 2:
        return row[0], None, row[1], None
    if len(row) == 3:
        return row[0], row[1], row[2], None
    if len(row) == 4:
        return row
    raise NetspecError("prediction_panels: a row is (image, prediction), (image, label, prediction) "
                       "or a dict with image, prediction and optionally label and title")


def _upscale(a, factor):
    return a if factor == 1 else np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)


def overlay_array(rgb, label, palette, alpha=0.5):
    """``rgb`` blended with the palette colours of ``label`` (uint8 HxWx3)."""
    colours = palette[np.asarray(label, np.int64).clip(0, 255)].astype(np.float64)
    return ((1 - alpha) * rgb.astype(np.float64) + alpha * colours).clip(0, 255).astype(np.uint8)


def prediction_panels(rows, class_names=None, palette=None, path="panels.png", *, size=256, alpha=0.5,
                      dpi=100):
    """Rows of image | ground truth | prediction | overlay (of the prediction), with a legend.

    ``rows``: ``(image, label, prediction)`` tuples (label may be None), ``(image, prediction)``
    pairs, or dicts with ``image``, ``prediction`` and optional ``label``, ``title``.  Images are
    RGB (uint8 or 0..255 floats, or PIL images); labels and predictions are ``(H, W)`` class
    indices (255 = void).  Small images are upscaled by an integer factor (nearest neighbour) to
    about ``size`` pixels, so every colour in the panel is a palette colour.  The ground-truth
    column appears when any row has a label.  Each row's legend lists the classes present in its
    label and prediction with their palette colours (VOC palette and class names by default).
    """
    rows = [_row(r) for r in rows]
    if not rows:
        raise NetspecError("prediction_panels: no rows to draw")
    pal = palette_array(palette)
    names = list(class_names) if class_names is not None else list(VOC_CLASSES)
    with_gt = any(r[1] is not None for r in rows)
    columns = ["image"] + (["ground truth"] if with_gt else []) + ["prediction", "overlay"]
    cells = []
    for image, label, pred, title in rows:
        rgb = _rgb(image)
        pred = np.asarray(pred, np.int64)
        if pred.shape != rgb.shape[:2]:
            raise NetspecError(f"prediction_panels: the prediction is {pred.shape[0]}x{pred.shape[1]} "
                               f"but the image {rgb.shape[0]}x{rgb.shape[1]}")
        if label is not None:
            label = np.asarray(label, np.int64).reshape(pred.shape)
        long = max(rgb.shape[:2])
        factor = max(1, int(round(size / long))) if long < size else 1
        pictures = [rgb]
        if with_gt:
            pictures.append(pal[label.clip(0, 255)] if label is not None
                            else np.full(rgb.shape, 255, np.uint8))
        pictures += [pal[pred.clip(0, 255)], overlay_array(rgb, pred, pal, alpha)]
        present = sorted(set(np.unique(pred).tolist()) | (set(np.unique(label).tolist()) if label is not None
                                                          else set()))
        present = [c for c in present if c != VOID] + ([VOID] if VOID in present else [])
        cells.append(([_upscale(p, factor) for p in pictures], present, title, label is not None))

    margin, gap, band, legend_w = 12, 10, 30, 230
    cell_w = max(c[0][0].shape[1] for c in cells)
    widths = len(columns) * cell_w + (len(columns) - 1) * gap
    W = 2 * margin + widths + gap + legend_w
    H = 2 * margin + sum(band + c[0][0].shape[0] + gap for c in cells) - gap
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(W / dpi, H / dpi), dpi=dpi)
        fig.patch.set_facecolor("white")
        y = margin
        for pictures, present, title, has_label in cells:
            h = pictures[0].shape[0]
            for j, (picture, caption) in enumerate(zip(pictures, columns)):
                x = margin + j * (cell_w + gap)
                w = picture.shape[1]
                a = fig.add_axes([x / W, 1 - (y + band + h) / H, w / W, h / H])
                a.imshow(picture, interpolation="nearest", aspect="auto", resample=False)
                a.set_axis_off()
                if caption == "ground truth" and not has_label:
                    caption = "ground truth (none)"
                if j == 0 and title:
                    caption = f"{title}"
                fig.text((x + w / 2) / W, 1 - (y + band - 6) / H, caption, ha="center", va="bottom",
                         fontsize=13)
            a = fig.add_axes([(margin + widths + gap) / W, 1 - (y + band + h) / H, legend_w / W, h / H])
            a.set_axis_off()
            handles = [Patch(facecolor=_hex(pal[c]), edgecolor="black", linewidth=0.6, label=_name(names, c))
                       for c in present]
            a.legend(handles=handles, loc="upper left", frameon=False, borderaxespad=0.0,
                     ncol=2 if len(handles) * 24 > h else 1, handlelength=1.6, handleheight=1.2,
                     fontsize=12, title="classes", title_fontsize=12, alignment="left")
            y += band + h + gap
        return _save(fig, path, dpi)


# ------------------------------------------------------------------ score figures

def _hist(hist):
    hist = np.asarray(hist, np.float64)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1] or hist.shape[0] < 1:
        raise NetspecError(f"the confusion histogram must be square (n, n), got shape {hist.shape}")
    return hist


def confusion_matrix(hist, class_names=None, path="confusion_matrix.png", dpi=100):
    """The confusion histogram, each ground-truth row normalised to 1 (recall), as a PNG."""
    hist = _hist(hist)
    n = hist.shape[0]
    names = [_name(class_names if class_names is not None else default_class_names(n), i) for i in range(n)]
    totals = hist.sum(axis=1, keepdims=True)
    normalised = np.divide(hist, totals, out=np.zeros_like(hist), where=totals > 0)
    side = max(7.0, 0.5 * n + 3.5)
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(side + 1.5, side), dpi=dpi, layout="constrained")
        a = fig.add_subplot()
        image = a.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        fig.colorbar(image, ax=a, shrink=0.8, label="fraction of the ground-truth class's pixels")
        a.set_xticks(range(n), names, rotation=45, ha="right")
        a.set_yticks(range(n), names)
        a.set_xlabel("prediction")
        a.set_ylabel("ground truth")
        if n <= 30:
            for i in range(n):
                for j in range(n):
                    if hist[i, j]:
                        v = normalised[i, j]
                        a.text(j, i, f"{100 * v:.0f}" if v >= 0.005 else "·", ha="center", va="center",
                               fontsize=10 if n <= 15 else 7, color="white" if v > 0.55 else "black")
        a.set_title(f"confusion matrix (% of each row; {int(hist.sum())} pixels)")
        return _save(fig, path, dpi)


def per_class_iu(hist, class_names=None, path="per_class_iu.png", palette=None, dpi=100):
    """Per-class IU (bars in the classes' palette colours) and per-class accuracy, as a PNG."""
    from .score import scores
    hist = _hist(hist)
    n = hist.shape[0]
    names = [_name(class_names if class_names is not None else default_class_names(n), i) for i in range(n)]
    result = scores(hist)
    iu, acc = result["per_class_iu"], result["per_class_acc"]
    pal = palette_array(palette)
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(11, max(4.5, 0.42 * n + 2)), dpi=dpi, layout="constrained")
        a = fig.add_subplot()
        ys = np.arange(n)
        a.barh(ys, np.nan_to_num(iu), color=[_hex(pal[i]) for i in range(n)], edgecolor="black",
               linewidth=0.6, height=0.7, label="IU")
        a.scatter(np.where(np.isnan(acc), np.nan, acc), ys, marker="|", s=250, color="#d62728", zorder=3,
                  label="accuracy")
        for i in range(n):
            text = "n/a" if np.isnan(iu[i]) else f"{100 * iu[i]:.1f}"
            a.text((0 if np.isnan(iu[i]) else iu[i]) + 0.01, i, text, va="center", fontsize=11,
                   bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0, "alpha": 0.8})
        if not math.isnan(result["mean_iu"]):
            a.axvline(result["mean_iu"], color="#444444", ls="--", lw=1.5,
                      label=f"mean IU {100 * result['mean_iu']:.1f}")
        a.set_yticks(ys, names)
        a.invert_yaxis()
        a.set_xlim(0, 1.12)
        a.set_xlabel("intersection over union")
        a.set_title(f"per-class IU (pixel accuracy {100 * result['pixel_acc']:.1f}, "
                    f"mean IU {100 * result['mean_iu']:.1f})")
        a.grid(True, axis="x", alpha=0.35)
        a.legend(loc="lower right")
        return _save(fig, path, dpi)


def score_figures(hist, class_names=None, directory=".", palette=None):
    """Write ``confusion_matrix.png`` and ``per_class_iu.png`` into ``directory``; return their paths."""
    return (confusion_matrix(hist, class_names, os.path.join(directory, "confusion_matrix.png")),
            per_class_iu(hist, class_names, os.path.join(directory, "per_class_iu.png"), palette))

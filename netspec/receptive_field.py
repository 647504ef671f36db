"""Receptive fields, parameter counts and multiply-adds of every layer of a net.

The receptive field (rf) of a unit is the set of input pixels path-connected to it
(Long's thesis, ch. 2).  Along each spatial axis it is an interval; this module
computes, for every spatial blob, the interval ``[S(x), E(x)]`` of input pixels seen
by unit ``x``, exactly, in integer input-pixel coordinates (before any padding, so
it may start below 0 or end past the image: padding counts, as in Table 2.1 and the
FCN paper's rf sizes).

Representation (:class:`AxisRF`): ``S`` and ``E`` are periodic up to a jump,
``S(x + period) = S(x) + jump``, given by their values on one period.  Convolution,
Pooling, Crop and elementwise layers keep the period at 1 (``S(x) = S(0) + stride*x``);
a Deconvolution of stride ``s`` makes the rf depend on the output phase (each output
sees ``floor`` or ``ceil`` of ``kernel/s`` inputs), which the period keeps exact.

Reported per axis: ``size = max_x (E(x) - S(x) + 1)`` (the rf of every unit when the
period is 1), ``stride = jump / period`` (input pixels between neighbouring units; a
fraction after a Deconvolution), ``offset = (S(0) + E(0)) / 2`` (the centre of the
first unit's rf, in input pixels; negative with padding).  :meth:`AxisRF.centres`
gives the exact centre of every unit.

Layer rules:

- Convolution / Pooling / Im2col (kernel k, dilation d, stride s, pad p):
  ``S'(x) = S(s*x - p)``, ``E'(x) = E(s*x - p + (k-1)*d)``.  Caffe's ceil/floor
  rounding of pooling changes only how many units there are.
- Deconvolution: output ``y`` gathers the inputs ``x = (y + p - d*t) / s`` (integral,
  ``t < k``), so ``S'(y) = S(min x)``, ``E'(y) = E(max x)``.
- Crop: ``S'(x) = S(x + offset)`` along the cropped axes (the rf follows bottom 0;
  bottom 1 only gives the size).
- InnerProduct over a spatial blob, global pooling: the equivalent Convolution with
  the whole blob as its kernel (FCN's reading of fc6), so the single output unit has
  the rf of the whole window (AlexNet fc6: 355, VGG16 fc6: 404); InnerProduct over a
  non-spatial blob keeps its bottom's rf.
- Elementwise and channel-wise layers (ReLU, Dropout, BatchNorm, Scale, LRN across
  channels, Softmax, ...) keep the rf; LRN within a channel is a ``local_size``
  window.
- Merges (Eltwise, Concat on axes 0/1, Scale/Bias with a spatial second bottom):
  the union, ``S' = min S_b``, ``E' = max E_b`` unit by unit.  Bottoms at different
  strides cannot be merged exactly (the union grows without bound): the merged blob
  gets the largest stride and the union over the first period, and a warning.
- Concat/Slice along a spatial axis, Reshape, Flatten, Python layers, ...: no rf
  (a warning when a spatial rf stops there).

Parameters: every learned blob a layer owns (a shared blob counts once, at its
owner); BatchNorm's statistics are not parameters.  ``learned`` totals leave out
blobs with ``lr_mult: 0`` (FCN's fixed bilinear upsampling).

Multiply-adds (MACs), for the blob shapes including the batch N:
Convolution ``top elements * (C_in/group) * prod(kernel)``; Deconvolution
``bottom elements * (C_out/group) * prod(kernel)``; InnerProduct ``N * K * M``.
Bias additions, pooling, ReLU, LRN, Eltwise, Softmax and every other layer count 0:
they do comparisons, additions or a few operations per element, not multiply-adds.
"""
import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .errors import NetspecError

# layers whose tops keep the (union of the) bottoms' rf
IDENTITY_TYPES = frozenset([
    'AbsVal', 'BatchNorm', 'Bias', 'BNLL', 'Clip', 'Dropout', 'Eltwise', 'ELU', 'Exp', 'Log',
    'MVN', 'Power', 'PReLU', 'ReLU', 'Scale', 'Sigmoid', 'Split', 'Swish', 'TanH',
    'Threshold', 'Softmax', 'Concat', 'Slice', 'ArgMax', 'Silence'])
DATA_TYPES = ("Python", "Data", "ImageData", "HDF5Data", "MemoryData", "WindowData")


@dataclass(frozen=True)
class AxisRF:
    """The rf along one axis: unit x sees input pixels ``[start(x), end(x)]``."""
    period: int
    jump: int                       # S(x + period) - S(x)
    starts: tuple
    ends: tuple

    @staticmethod
    def pixel():
        return AxisRF(1, 1, (0,), (0,))

    def start(self, x):
        q, r = divmod(x, self.period)
        return self.starts[r] + self.jump * q

    def end(self, x):
        q, r = divmod(x, self.period)
        return self.ends[r] + self.jump * q

    @property
    def stride(self):
        return Fraction(self.jump, self.period)

    @property
    def size(self):
        return max(e - s + 1 for s, e in zip(self.starts, self.ends))

    @property
    def offset(self):
        return Fraction(self.starts[0] + self.ends[0], 2)

    def centres(self, count):
        """The rf centre of units 0 .. count-1, in input pixels (float64)."""
        x = np.arange(count)
        q, r = np.divmod(x, self.period)
        s = np.asarray(self.starts)[r] + self.jump * q
        e = np.asarray(self.ends)[r] + self.jump * q
        return (s + e) / 2.0

    def normalized(self):
        """The same rf with the smallest period."""
        for d in range(1, self.period):
            if self.period % d or (self.jump * d) % self.period:
                continue
            step = self.jump * d // self.period
            if all(self.start(r + d) - self.start(r) == step and self.end(r + d) - self.end(r) == step
                   for r in range(self.period)):
                return AxisRF(d, step, self.starts[:d], self.ends[:d])
        return self

    # -- layer rules ---------------------------------------------------------
    def window(self, kernel, stride, pad, dilation=1):
        period = self.period // math.gcd(stride, self.period)
        extent = (kernel - 1) * dilation
        starts = tuple(self.start(stride * r - pad) for r in range(period))
        ends = tuple(self.end(stride * r - pad + extent) for r in range(period))
        return AxisRF(period, self.jump * stride * period // self.period, starts, ends).normalized()

    def deconvolution(self, kernel, stride, pad, dilation=1):
        period = stride * self.period
        starts, ends = [], []
        for y in range(period):
            xs = [(y + pad - dilation * t) // stride for t in range(kernel)
                  if (y + pad - dilation * t) % stride == 0]
            if not xs:
                return None             # a unit that sees only the bias
            starts.append(self.start(min(xs)))
            ends.append(self.end(max(xs)))
        return AxisRF(period, self.jump, tuple(starts), tuple(ends)).normalized()

    def shifted(self, offset):
        starts = tuple(self.start(r + offset) for r in range(self.period))
        ends = tuple(self.end(r + offset) for r in range(self.period))
        return AxisRF(self.period, self.jump, starts, ends)


def union(rfs):
    """``(AxisRF, exact)``: the unit-by-unit union of several rfs of one blob's units."""
    period = math.lcm(*(rf.period for rf in rfs))
    strides = {rf.stride for rf in rfs}
    stride = max(strides)
    starts = tuple(min(rf.start(r) for rf in rfs) for r in range(period))
    ends = tuple(max(rf.end(r) for rf in rfs) for r in range(period))
    jump = stride * period
    return AxisRF(period, int(jump), starts, ends).normalized(), len(strides) == 1


def _merge(rfs, what, warn):
    rfs = [rf for rf in rfs if rf is not None]
    if not rfs:
        return None
    if len(rfs) == 1:
        return rfs[0]
    if len({len(rf) for rf in rfs}) != 1:
        return None
    merged = []
    for axis, axis_rfs in enumerate(zip(*rfs)):
        rf, exact = union(axis_rfs)
        if not exact:
            strides = ", ".join(_fmt_number(r.stride) for r in axis_rfs)
            warn(f"{what}: merges paths with different strides ({strides}) on axis {axis}; "
                 f"reporting the largest stride and the union over one period")
        merged.append(rf)
    return tuple(merged)


# ---------------------------------------------------------------------------
# per-layer analysis
# ---------------------------------------------------------------------------

@dataclass
class LayerInfo:
    name: str
    type: str
    bottoms: list
    tops: list
    shapes: list                    # one per top
    params: int = 0
    learned_params: int = 0
    macs: int = 0
    rfs: list = field(default_factory=list)     # one per top: tuple of AxisRF per spatial axis, or None

    def as_dict(self):
        def blob(top, shape, rf):
            entry = {"blob": top, "shape": list(shape)}
            entry.update(rf_fields(rf))
            return entry
        first = self.rfs[0] if self.rfs else None
        d = {"name": self.name, "type": self.type, "bottoms": list(self.bottoms), "tops": list(self.tops),
             "shape": list(self.shapes[0]) if self.shapes else None,
             "params": self.params, "learned_params": self.learned_params, "macs": self.macs}
        d.update(rf_fields(first))
        d["blobs"] = [blob(t, s, rf) for t, s, rf in zip(self.tops, self.shapes, self.rfs)]
        return d


def _json_number(value):
    value = Fraction(value)
    return int(value) if value.denominator == 1 else float(value)


def rf_fields(rf):
    """``rf_size``, ``rf_stride``, ``rf_offset`` (per-axis lists, or None) of one blob's rf."""
    if rf is None:
        return {"rf_size": None, "rf_stride": None, "rf_offset": None}
    return {"rf_size": [a.size for a in rf], "rf_stride": [_json_number(a.stride) for a in rf],
            "rf_offset": [_json_number(a.offset) for a in rf]}


def _spatial(shape):
    return len(shape) - 2 if len(shape) >= 3 else 0


def _geometry(impl):
    """Per spatial axis (kernel, stride, pad, dilation) of a built window layer."""
    n = len(impl.kernel)
    dilation = getattr(impl, "dilation", [1] * n)
    return [(int(impl.kernel[i]), int(impl.stride[i]), int(impl.pad[i]), int(dilation[i])) for i in range(n)]


def _layer_rfs(node, shapes, current, warn):
    """The rf of each top of ``node`` from its bottoms' rfs ``current``."""
    bottoms = [current.get(b) for b in node.bottoms]
    bshapes = [shapes[b] for b in node.bottoms]
    tshapes = [shapes[t] for t in node.tops]
    what = f'layer "{node.name}" ({node.type})'
    t = node.type
    impl = node.impl
    first = bottoms[0] if bottoms else None
    none = [None] * len(node.tops)

    def spatial_ok(rf, shape):
        return rf is not None and len(rf) == _spatial(shape)

    if t in ("Convolution", "Pooling", "Im2col", "Deconvolution") and first is not None:
        if t == "Pooling" and node.lp.pooling_param.global_pooling:
            return [_whole_window(first, bshapes[0])] * len(node.tops)
        axis = getattr(impl, "axis", 1)
        if axis != 1 or not spatial_ok(first, bshapes[0]) or len(impl.kernel) != len(first):
            return none
        rfs = []
        for b_rf in bottoms:
            if t == "Deconvolution":
                axes = [a.deconvolution(k, s, p, d) for a, (k, s, p, d) in zip(b_rf, _geometry(impl))]
                if any(a is None for a in axes):
                    warn(f"{what}: stride larger than the kernel extent leaves units that see no input; no rf")
                    rfs.append(None)
                    continue
            else:
                axes = [a.window(k, s, p, d) for a, (k, s, p, d) in zip(b_rf, _geometry(impl))]
            rfs.append(tuple(axes))
        return rfs + [rfs[0]] * (len(node.tops) - len(rfs))      # Pooling's mask top
    if t == "InnerProduct":
        if first is None:
            return none
        if spatial_ok(first, bshapes[0]) and impl.axis == 1:
            return [_whole_window(first, bshapes[0])]
        return [first] if impl.axis <= 1 else none
    if t == "Crop":
        if not spatial_ok(first, bshapes[0]):
            return none
        starts = impl.starts
        return [tuple(a.shifted(starts[2 + i]) if 2 + i < len(starts) else a for i, a in enumerate(first))]
    if t == "LRN" and node.lp.lrn_param.norm_region == node.lp.lrn_param.WITHIN_CHANNEL:
        if not spatial_ok(first, bshapes[0]):
            return none
        k = impl.size
        return [tuple(a.window(k, 1, (k - 1) // 2) for a in first)]
    if t == "LRN" or t in IDENTITY_TYPES:
        if t in ("Concat", "Slice"):
            axis = node.impl.axis if hasattr(node.impl, "axis") else 1
            if axis >= 2:
                if any(rf is not None for rf in bottoms):
                    warn(f"{what}: joins or splits along spatial axis {axis}; no rf")
                return none
        rfs = []
        for top_shape in tshapes:
            usable = [rf for rf, s in zip(bottoms, bshapes)
                      if rf is not None and s[2:] == top_shape[2:] and len(s) == len(top_shape)]
            if not usable and _spatial(top_shape) == 0:
                usable = [rf for rf in bottoms if rf is not None][:1]
            if t == "ArgMax" and _spatial(top_shape) == 0:
                usable = []
            rfs.append(_merge(usable, what, warn))
        return rfs
    if any(rf is not None for rf, s in zip(bottoms, bshapes) if _spatial(s)) and \
            any(_spatial(s) for s in tshapes) and not node.is_input:
        warn(f"{what}: the rf is not followed through this layer type")
    return none


def _whole_window(rf, shape):
    """The rf of a layer whose window is its whole spatial input (InnerProduct, global pooling)."""
    if rf is None or len(rf) != _spatial(shape):
        return None
    return tuple(a.window(size, 1, 0) for a, size in zip(rf, shape[2:]))


def _macs(node, shapes):
    t = node.type
    if t not in ("Convolution", "Deconvolution", "InnerProduct") or node.impl is None:
        return 0
    impl = node.impl
    if t == "InnerProduct":
        outer = int(np.prod(shapes[node.bottoms[0]][:impl.axis], dtype=np.int64))
        return outer * impl.k * impl.num_output
    kernel = int(np.prod(impl.kernel))
    total = 0
    if t == "Convolution":
        for top in node.tops:
            total += int(np.prod(shapes[top], dtype=np.int64)) * (impl.channels // impl.group) * kernel
    else:
        for bottom in node.bottoms:
            total += int(np.prod(shapes[bottom], dtype=np.int64)) * (impl.num_output // impl.group) * kernel
    return total


def analyze(graph, warn=None):
    """One :class:`LayerInfo` per layer of a built :class:`netspec.graph.Graph`, in order."""
    notes = []
    warn = warn or notes.append
    shapes = dict(graph.blob_shapes)
    owned = {}
    for layer, blob_shapes in graph.param_shapes.items():
        owned[layer] = [int(np.prod(s, dtype=np.int64)) for s in blob_shapes]
    current = {}
    rows = []
    for node in graph.nodes:
        if node.is_input:
            rfs = [tuple(AxisRF.pixel() for _ in range(_spatial(shapes[t]))) if _spatial(shapes[t]) else None
                   for t in node.tops]
        else:
            rfs = _layer_rfs(node, shapes, current, warn)
        counts = owned.get(node.name, [])
        lr = [m for key, m in zip(node.param_keys, node.lr_mults) if key[0] == node.name]
        learned = sum(c for c, m in zip(counts, lr) if m != 0)
        rows.append(LayerInfo(node.name, node.type, list(node.bottoms), list(node.tops),
                              [tuple(shapes[t]) for t in node.tops], sum(counts), learned,
                              _macs(node, shapes), list(rfs)))
        for top, rf in zip(node.tops, rfs):
            current[top] = rf
    return rows


def receptive_fields(graph):
    """``{blob: (AxisRF per spatial axis) or None}``: each blob's rf as the net leaves it."""
    current = {}
    for row in analyze(graph, warn=lambda message: None):
        for top, rf in zip(row.tops, row.rfs):
            current[top] = rf
    return current


def layer_rf(graph, layer):
    """The rf of ``layer``'s first top right after that layer (in-place layers later keep it)."""
    for row in analyze(graph, warn=lambda message: None):
        if row.name == layer:
            return row.rfs[0] if row.rfs else None
    raise KeyError(layer)


# ---------------------------------------------------------------------------
# building the graph for a prototxt, and the text table
# ---------------------------------------------------------------------------

def parse_input_shapes(specs, what="--input-shape"):
    """``["1,3,227,227", "label=1,1,500,500"]`` -> ``{name or None: shape}``."""
    shapes = {}
    for spec in specs or ():
        name, dims = (spec.split("=", 1) if "=" in spec else (None, spec))
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not shape or min(shape) < 1 or (name is not None and not name):
            raise NetspecError(f"{what} {spec}: write it as N,C,H,W or BLOB=N,C,H,W (positive integers)")
        shapes[name] = shape
    return shapes


def _guess_shape(top):
    channels = 1 if any(k in top for k in ("label", "sem", "geo", "depth")) else 3
    return (1, channels, 500, 500)


def graph_for_net(net, phase=None, input_shapes=None, note=None):
    """Build ``net`` (a NetParameter) for ``phase``, with its data layers as inputs.

    ``input_shapes``: ``{blob: shape}``; the key None means the first input.  Data
    layers (Python, Data, ...) are not run: their tops take the given shapes, else
    ``1,3,500,500`` (``1,1,500,500`` for label-like tops), with a ``note``.
    """
    from .graph import build_graph, filter_layers
    from .layers.base import TEST
    from .proto import caffe_pb2
    phase = TEST if phase is None else phase
    note = note or (lambda message: None)
    state = caffe_pb2.NetState(phase=phase)
    kept = filter_layers(net, state)
    hosts = [lp for lp in kept if not lp.bottom and lp.type in DATA_TYPES]
    inputs = [t for lp in kept if (lp.type == "Input" or lp in hosts) for t in lp.top]
    shapes = dict(input_shapes or {})
    if None in shapes:
        if not inputs:
            raise NetspecError("--input-shape: the net has no input blob to give a shape to")
        shapes[inputs[0]] = shapes.pop(None)
    for name in shapes:
        if name not in inputs:
            raise NetspecError(f'--input-shape: the net has no input blob "{name}" '
                               f'(inputs: {", ".join(inputs) or "none"})')
    guessed = []
    for lp in hosts:
        for t in lp.top:
            if t not in shapes:
                shapes[t] = _guess_shape(t)
                guessed.append(f"{t} {'x'.join(map(str, shapes[t]))}")
    if guessed:
        note(f"data layers are not run; assuming {', '.join(guessed)} (give --input-shape BLOB=N,C,H,W)")
    return build_graph(net, phase, input_shapes=shapes, host_layers=[lp.name for lp in hosts])


def _fmt_number(value):
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    if value.denominator == 2:
        return f"{float(value):g}"
    return f"{value.numerator}/{value.denominator}"


def _fmt_axes(values):
    values = [_fmt_number(v) for v in values]
    return values[0] if len(set(values)) == 1 and len(values) == 2 else "x".join(values)


def _human(n):
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def totals(rows):
    return {"params": sum(r.params for r in rows), "learned_params": sum(r.learned_params for r in rows),
            "macs": sum(r.macs for r in rows)}


def format_table(rows):
    """An aligned text table (one line per layer top) and a totals line."""
    header = ["layer", "type", "top", "shape", "params", "MACs", "rf size", "rf stride", "rf offset"]
    lines = []
    for r in rows:
        tops = r.tops or [""]
        for i, top in enumerate(tops):
            shape = "x".join(map(str, r.shapes[i])) if r.shapes else ""
            rf = r.rfs[i] if r.rfs else None
            cells = [r.name if i == 0 else "", r.type if i == 0 else "", top, shape,
                     f"{r.params:,}" if i == 0 and r.params else "",
                     f"{r.macs:,}" if i == 0 and r.macs else ""]
            if rf:
                cells += [_fmt_axes([a.size for a in rf]), _fmt_axes([a.stride for a in rf]),
                          ",".join(_fmt_number(a.offset) for a in rf)]
            else:
                cells += ["-", "-", "-"]
            lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    numeric = {4, 5}
    out = []
    for cells in [header] + lines:
        out.append("  ".join(str(c).rjust(w) if i in numeric else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
    t = totals(rows)
    out.append(f"total: {t['params']:,} params ({_human(t['params'])}; learned {t['learned_params']:,}, "
               f"{_human(t['learned_params'])}), {t['macs']:,} multiply-adds ({_human(t['macs'])})")
    return "\n".join(out)


def info(net, phase=None, input_shapes=None):
    """``(rows, notes)`` for a NetParameter: :func:`analyze` of :func:`graph_for_net`."""
    notes = []
    graph = graph_for_net(net, phase, input_shapes, note=notes.append)
    rows = analyze(graph, warn=notes.append)
    return rows, notes

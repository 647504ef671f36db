"""Any-size execution: one compiled executable per bucket of image sizes, exact results.

FCN trains and tests on whole images, batch 1, each at its own size, and a compiled
net has one executable per input shape.  Here an input of size (h, w) runs in the
executable of its *bucket* (H, W) >= (h, w): the inputs are zero-padded at the bottom
and right, the true (h, w) goes in as runtime integers, and the compiler keeps every
result inside the true extent equal to the exact-shape run (``netspec.compiler``:
each spatial blob's extent follows Caffe's size formulas; cells outside it are
overwritten before any layer that reads across positions; losses and their
normalizers count only the inside).  Users get blobs at their true shapes.

A net qualifies when every layer that receives a padded blob is local and
translation-covariant in H and W (``Layer.spatially_local``): Convolution, Pooling
(not global), LRN, elementwise layers, Crop, Eltwise, Concat/Slice on channels,
BatchNorm, Scale, Softmax, the pixelwise losses, Accuracy.  Any other (InnerProduct
or Reshape over spatial axes, global pooling, a Python layer with bottoms) makes the
net run at exact shapes, as before, with one note naming the layer.

Policies (``buckets=`` of ``Net``/``Solver``, ``--buckets`` on the command line):

- ``"auto"`` (default): the first input shapes a net sees run exact (a net fed one
  size, like most deploy nets and fixed-crop training, never pays for padding: FCN-8s's
  500x500 training step is 5% slower in its 512x512 bucket); from the second distinct
  shapes on, each side is rounded up to a multiple of 32, or of the net's coarsest
  stride when that is larger (the first shapes keep their exact executable);
- an integer N: each side rounded up to a multiple of N;
- a list of sizes (``[256, 384, 512]`` or ``"256,384,512"``): each side rounded up to
  the smallest listed size that holds it; a side larger than every listed size gets
  a bucket of its own (rounded up to a multiple of 32);
- ``None``/``"off"``: exact shapes (one executable per input size).

Only 4-axis inputs larger than 1x1 in H, W are padded (so an (N, C, 1, 1) side input
stays as it is).
"""
import math

import numpy as np

from .errors import NetspecError

AUTO = "auto"
DEFAULT_MULTIPLE = 32


def parse_policy(value):
    """A bucket policy from what users write: None (exact), ("multiple", n) or ("sizes", (...)).
    ``"auto"`` stays ``"auto"`` (resolved per net, see ``Bucketing``)."""
    if value is None or value is False:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("off", "none", "exact", "no", "false", "0"):
            return None
        if text == AUTO:
            return AUTO
        parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise NetspecError(f'buckets "{value}": give auto, off, a multiple (32) or a list of '
                               'sizes (256,384,512)') from None
        value = numbers[0] if len(numbers) == 1 else numbers
    if isinstance(value, bool):
        return AUTO if value else None
    if isinstance(value, int):
        if value < 1:
            raise NetspecError(f"buckets {value}: the multiple must be >= 1 (or use off)")
        return ("multiple", value)
    sizes = tuple(sorted(int(v) for v in value))
    if not sizes or sizes[0] < 1:
        raise NetspecError(f"buckets {list(value)}: sizes must be >= 1")
    return ("sizes", sizes)


def round_side(size, policy):
    """The bucket side for a side of ``size`` under a resolved policy."""
    kind, arg = policy
    if kind == "multiple":
        return -(-size // arg) * arg
    for bucket in arg:
        if bucket >= size:
            return bucket
    return -(-size // DEFAULT_MULTIPLE) * DEFAULT_MULTIPLE


def coarsest_stride(graph):
    """The largest total stride of any blob relative to the inputs (32 for FCN-VGG16):
    the product of Convolution/Pooling strides along a path, divided by Deconvolution's."""
    from fractions import Fraction
    stride = {name: Fraction(1) for name in graph.inputs}
    for node in graph.nodes:
        if node.is_input:
            continue
        incoming = max((stride.get(b, Fraction(1)) for b in node.bottoms), default=Fraction(1))
        layer_stride = getattr(node.impl, "stride", None)
        if layer_stride:
            factor = Fraction(max(int(s) for s in layer_stride))
            incoming = incoming / factor if getattr(node.impl, "reverse", False) else incoming * factor
        for t in node.tops:
            stride[t] = incoming
    return max(1, math.ceil(max(stride.values(), default=1)))


def is_spatial_input(shape):
    return len(shape) == 4 and shape[2] * shape[3] > 1


def padded_blobs(graph, padded_inputs):
    """``(blobs, None)``: every blob a padded pass pads (the inputs and the 4-axis blobs
    computed from them, in order), or ``(None, node)``: the first node that would receive
    a padded blob but is not spatially local."""
    padded = list(padded_inputs)
    for node in graph.nodes:
        if node.is_input or not any(b in padded for b in node.bottoms):
            continue
        if not node.impl.spatially_local:
            return None, node
        padded += [t for t, s in zip(node.tops, node.impl.top_shapes()) if len(s) == 4 and t not in padded]
    return padded, None


class Plan:
    """How one set of input shapes runs: ``graph`` (the bucket graph, or the exact graph
    when not padded), ``exact`` (the graph at the true shapes: the blobs users see), and
    for a padded pass the true extent of every padded blob, computed here on the host
    from the exact graph: ``extent_names`` (the blobs, fixed per bucket graph) and
    ``extents`` (int32 (len(extent_names), 2), the runtime argument; None when not
    padded).  ``unpack_extents`` turns that argument into ``compiler.forward``'s dict.

    (Passing every blob's extent, rather than the inputs' alone and letting the compiled
    function derive the rest, keeps each mask a function of one argument: the chains of
    size formulas that XLA would otherwise fuse into every masked layer doubled the
    compile time of FCN-8s.)"""

    def __init__(self, graph, exact, extent_names=None):
        self.graph, self.exact = graph, exact
        self.extent_names = tuple(extent_names or ())
        self.extents = None
        if extent_names is not None:
            self.extents = np.array([exact.blob_shapes[n][2:] for n in self.extent_names], np.int32)

    @property
    def padded(self):
        return self.extents is not None

    def unpack_extents(self, packed):
        """``{blob: (h, w)}`` from the packed argument (inside the compiled function)."""
        if packed is None:
            return None
        return {name: (packed[i, 0], packed[i, 1]) for i, name in enumerate(self.extent_names)}

    @property
    def bucket(self):
        """The padded input shapes, e.g. ``{"data": (1, 3, 512, 384)}``."""
        return {name: self.graph.blob_shapes[name] for name in self.graph.inputs}

    def pad(self, name, array):
        """An input value at the bucket shape (zeros below and to the right)."""
        array = np.asarray(array)
        if not self.padded or name not in self.extent_names:
            return array
        target = self.graph.blob_shapes[name]
        if array.shape == target:
            return array
        out = np.zeros(target, array.dtype)
        out[:, :, :array.shape[2], :array.shape[3]] = array
        return out

    def pad_inputs(self, values):
        return {name: self.pad(name, value) for name, value in values.items()}

    def crop(self, name, array):
        """A blob value (host or device array) cut to its true shape."""
        if not self.padded:
            return array
        true = self.exact.blob_shapes.get(name)
        if true is None or len(true) != 4 or tuple(array.shape) == tuple(true):
            return array
        return array[:, :, :true[2], :true[3]]

    def pad_blob(self, name, array):
        """A value of any blob (e.g. a top diff a user sets) at the bucket shape."""
        array = np.asarray(array, np.float32)
        target = self.graph.blob_shapes.get(name)
        if not self.padded or target is None or array.shape == target or len(target) != 4:
            return array
        out = np.zeros(target, np.float32)
        out[:, :, :array.shape[2], :array.shape[3]] = array
        return out


class Bucketing:
    """The bucket policy of one net: turns input shapes into a ``Plan``.

    ``build(input_shapes) -> Graph`` builds (and caches) the net's graph for a set of
    input shapes; ``name`` is used in the note a non-qualifying net gets; ``note`` is
    where that one line goes (default: stderr).
    """

    def __init__(self, build, policy=AUTO, name="net", note=None):
        self.build = build
        self.policy = parse_policy(policy)
        self.name = name
        self.note = note or _stderr_note
        self.unsupported = None         # the note, once the net was found not to qualify
        self._padded_blobs = {}         # id(bucket graph) -> its padded blobs
        self._plans = {}

    @property
    def enabled(self):
        return self.policy is not None and self.unsupported is None

    def resolved_policy(self, graph):
        if self.policy == AUTO:
            return ("multiple", max(DEFAULT_MULTIPLE, coarsest_stride(graph)))
        return self.policy

    def bucket_shapes(self, graph, input_shapes):
        policy = self.resolved_policy(graph)
        shapes = {}
        for name, shape in input_shapes.items():
            shape = tuple(int(d) for d in shape)
            if is_spatial_input(shape):
                shape = shape[:2] + (round_side(shape[2], policy), round_side(shape[3], policy))
            shapes[name] = shape
        return shapes

    def plan(self, input_shapes):
        """The plan for these true input shapes (``{input blob: shape}``)."""
        key = tuple(sorted((k, tuple(v)) for k, v in input_shapes.items()))
        plan = self._plans.get(key)
        if plan is None or (plan.padded and not self.enabled):
            plan = self._plans[key] = self._make_plan(input_shapes)
        return plan

    def _make_plan(self, input_shapes):
        exact = self.build(input_shapes)
        first_under_auto = self.policy == AUTO and not self._plans
        if not self.enabled or first_under_auto:
            return Plan(exact, exact)
        padded_inputs = [n for n in exact.inputs if is_spatial_input(exact.blob_shapes[n])]
        if not padded_inputs:
            return Plan(exact, exact)
        bucket_shapes = self.bucket_shapes(exact, {n: exact.blob_shapes[n] for n in exact.inputs})
        try:
            graph = self.build(bucket_shapes)
        except NetspecError as e:   # the bucket size itself does not fit the net
            self._disable(f"{self.name}: cannot build the net at bucket shape "
                          f"{_shape_text(bucket_shapes)} ({e}); running at exact shapes")
            return Plan(exact, exact)
        if id(graph) not in self._padded_blobs:
            blobs, node = padded_blobs(graph, padded_inputs)
            if node is not None:
                self._disable(f'{self.name}: layer "{node.name}" ({node.type}) is not local in H '
                              'and W, so the net cannot run padded to a bucket size; running at '
                              'exact shapes (one compile per input size)')
                return Plan(exact, exact)
            self._padded_blobs[id(graph)] = blobs
        return Plan(graph, exact, self._padded_blobs[id(graph)])

    def _disable(self, message):
        if self.unsupported is None:
            self.unsupported = message
            self.note(message)


def _shape_text(shapes):
    return ", ".join(f"{k} {'x'.join(str(d) for d in v)}" for k, v in shapes.items())


def describe_bucket(plan):
    """``512x384`` (the padded H x W of the first spatial input), or ``exact 500x375``."""
    for name in plan.graph.inputs:
        shape = plan.graph.blob_shapes[name]
        if len(shape) == 4:
            size = f"{shape[2]}x{shape[3]}"
            return size if plan.padded else f"exact {size}"
    return "-"


def _stderr_note(message):
    import sys
    print(f"netspec: {message}", file=sys.stderr)

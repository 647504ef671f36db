"""The contract every layer type fulfils, and the registry that maps Caffe type strings to them.

A layer is one small class per Caffe type.  An instance is built for one net layer
(its ``LayerParameter``) and one set of bottom shapes, so all shape arithmetic and
parameter validation happens once, before any compute; ``forward`` is then traced by
JAX into the net's single jitted computation.  Gradients come from JAX's autodiff of
``forward``, so a layer writes only its forward pass (plus ``jax.custom_vjp`` where
Caffe's backward is not the exact derivative, e.g. first-maximum pooling ties).

Layout: shapes are always Caffe's (N, C, H, W, ...).  The arrays a layer receives
are in the same order unless the class sets ``channels_last = True``: then every
bottom and top with three or more axes is stored with the channel axis moved last
(N, H, W, C), the layout XLA runs convolutions fastest in.  ``elementwise = True``
layers accept any layout (their tops keep the bottoms' layout).

Padded execution (``netspec.buckets``): a layer that is local and translation-covariant
in H and W (``spatially_local``) can run on 4-axis blobs padded at the bottom/right to
a bucket shape.  The compiler then hands it each bottom's true extent
(``ctx.extents``), fills the cells outside it with ``spatial_fill(i)`` before the layer
reads them, and asks ``top_extents`` for the tops' extents.

State: ``state_shapes`` are non-learned blobs Caffe stores with the layer (BatchNorm's
statistics: saved in caffemodels, updated in TRAIN passes).  ``carried_shapes`` are
values a layer carries from one forward pass to the next that Caffe never saves
(LSTM/RNN's final h and c without ``expose_hidden``); the layer reads them as
``ctx.carried`` (empty: start from zeros) and hands the next pass's with
``ctx.set_carried``, in every phase.  In the pure ``state`` pytree
(``netspec.compiler``) a layer's entry is its stored blobs followed by its carried ones.
"""
from ..errors import NetspecError
from .extents import inside as inside_mask

TRAIN, TEST = 0, 1

_REGISTRY = {}


def register(*type_names):
    """Class decorator: make the class the implementation of these Caffe layer types."""
    def decorate(cls):
        for name in type_names:
            _REGISTRY[name] = cls
        cls.type = type_names[0]
        return cls
    return decorate


def registered_types():
    return sorted(_REGISTRY)


def layer_class(type_name, layer_name="?"):
    """The class implementing ``type_name``, or an error listing the supported types."""
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise NetspecError(
            f'layer "{layer_name}": unknown layer type "{type_name}"; supported types: '
            + ", ".join(registered_types())) from None


class LayerContext:
    """What ``forward`` may need beyond params and bottoms.

    ``train``: the phase's computation (Dropout drops, BatchNorm uses batch statistics
    unless told otherwise).  ``rng``: a JAX PRNG key private to this layer and this
    pass (None when the pass was given no key).  ``state``: the layer's non-learned
    blobs (BatchNorm's running statistics); a layer that updates them calls
    ``set_state(new_list)``.  ``carried``: the values the layer's previous pass
    handed on (``Layer.carried_shapes``), or an empty list for a first pass (start from
    zeros); the layer hands the next pass's with ``set_carried(new_list)``.
    ``extents``: per bottom, its true (h, w) as int32 scalars in a padded pass, else None.
    """

    def __init__(self, train, rng=None, state=(), extents=None, carried=()):
        self.train = train
        self.rng = rng
        self.state = list(state)
        self.new_state = None
        self.carried = list(carried)
        self.new_carried = None
        self.extents = list(extents or ())

    def set_state(self, blobs):
        self.new_state = list(blobs)

    def set_carried(self, values):
        self.new_carried = list(values)

    def extent(self, index):
        """Bottom ``index``'s true (h, w) in a padded pass, None otherwise."""
        return self.extents[index] if index < len(self.extents) else None

    def inside(self, index, shape, h_axis):
        """Mask (broadcastable to ``shape``, H at ``h_axis``, W after it) of the cells inside
        bottom ``index``'s true extent; None when the pass is not padded."""
        extent = self.extent(index)
        return None if extent is None else inside_mask(extent, shape, h_axis)


def count(shape):
    """Number of elements of a blob of this shape (1 for a 0-axis blob, as Caffe's count())."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


def channels_last_axis(caffe_axis, ndim):
    """Where Caffe axis ``caffe_axis`` of an ``ndim``-axis blob lives in channels-last storage."""
    if ndim < 3:
        return caffe_axis
    if caffe_axis == 1:
        return ndim - 1
    return caffe_axis - 1 if caffe_axis > 1 else caffe_axis


class Layer:
    """Base class: one Caffe layer type.  Subclasses override the methods they need.

    Class attributes: ``min_bottoms``/``max_bottoms``/``min_tops``/``max_tops``
    (None = unbounded), ``channels_last``, ``elementwise``, ``is_loss`` (a loss
    layer's first top gets ``loss_weight`` 1 unless the prototxt says otherwise),
    ``spatially_local`` (padded execution; a property where the parameters decide),
    ``float32_compute`` (losses, softmax and statistics stay float32 in a bf16 pass).
    """

    type = None
    min_bottoms, max_bottoms = 0, None
    min_tops, max_tops = 0, None
    channels_last = False
    elementwise = False
    is_loss = False
    spatially_local = False
    float32_compute = False     # in a bf16 pass, compute in float32 anyway (losses, statistics)

    def __init__(self, layer_param, bottom_shapes, phase=TEST):
        self.lp = layer_param
        self.name = layer_param.name
        self.phase = phase
        self.bottom_shapes = [tuple(int(d) for d in s) for s in bottom_shapes]
        self.num_tops = len(layer_param.top)
        self._check_counts()
        self.setup()

    # -- overridable --------------------------------------------------------
    def setup(self):
        """Read the layer's parameters and check the bottom shapes; raise ``self.error(...)``."""

    def top_shapes(self):
        """The shapes of the tops, in Caffe axis order.  Default: each top like bottom 0."""
        return [self.bottom_shapes[0]] * self.num_tops

    def param_shapes(self):
        """Shapes of the learned blobs (Caffe's ``layer.blobs`` order and shapes)."""
        return []

    def param_fillers(self):
        """A ``FillerParameter`` (or None for zeros) per learned blob."""
        return [None] * len(self.param_shapes())

    def state_shapes(self):
        """Shapes of non-learned blobs that Caffe stores with the layer (BatchNorm)."""
        return []

    def carried_shapes(self):
        """Shapes of the values carried from one forward pass to the next and never saved
        (LSTM/RNN's final h, c); zeros before the first pass and after a reshape."""
        return []

    def forward(self, ctx, params, bottoms):
        """Return the list of tops computed from ``params`` (list) and ``bottoms`` (list)."""
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def spatial_fill(self, index):
        """In a padded pass, the value bottom ``index``'s cells outside its true extent
        must hold for this layer to compute Caffe's result inside (0 before sums, -inf
        before maxima, a harmless argument before functions with singularities), or
        None when the layer never lets those cells reach the inside."""
        return None

    def top_extents(self, bottom_extents):
        """The tops' true extents from the bottoms' (Caffe's size formulas on runtime
        ints); None for tops that are not padded.  Default: a 4-axis top keeps bottom 0's."""
        first = bottom_extents[0] if bottom_extents else None
        return [first if len(s) == 4 else None for s in self.top_shapes()]

    # -- helpers ------------------------------------------------------------
    def canonical_axis(self, axis, ndim, what="axis"):
        """Caffe's ``CanonicalAxisIndex``: ``axis`` in [-ndim, ndim), negative counting from the end."""
        if not -ndim <= axis < ndim:
            raise self.error(f"{what} {axis} is out of range for a bottom with {ndim} axes "
                             f"(shape {self.bottom_shapes[0] if self.bottom_shapes else ()})")
        return axis % ndim

    def error(self, message):
        """A user-facing error naming this layer."""
        return NetspecError(f'layer "{self.name}" ({self.lp.type}): {message}')

    def _check_counts(self):
        nb, nt = len(self.bottom_shapes), self.num_tops
        for what, n, lo, hi in (("bottom", nb, self.min_bottoms, self.max_bottoms),
                                ("top", nt, self.min_tops, self.max_tops)):
            if n < lo or (hi is not None and n > hi):
                want = str(lo) if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
                raise self.error(f"takes {want} {what}s, got {n}")

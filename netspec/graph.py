"""From a ``NetParameter`` to a checked layer graph with every blob's shape known.

This is Caffe's ``Net::Init`` without the compute: keep the layers whose
include/exclude rules match the ``NetState``, connect bottoms to tops (in-place
tops rebind a name), decide loss weights, parameter sharing and learning-rate
multipliers, and build every layer's implementation for the current bottom shapes,
so that a shape that does not fit is reported before anything runs.
"""
from dataclasses import dataclass, field
from numbers import Integral

from .errors import NetspecError
from .layers.base import TRAIN, count, layer_class

# Layer types whose tops are fed from outside the jitted computation.
INPUT_TYPES = ("Input",)
# Caffe's name for the top it adds to a loss layer given none (Net::AppendTop).
AUTOMATIC_TOP = "(automatic)"


@dataclass
class Node:
    """One kept layer of the net, with its implementation for the current shapes."""
    name: str
    type: str
    lp: object
    bottoms: list
    tops: list
    impl: object = None             # a netspec.layers.Layer, None for inputs
    loss_weights: list = field(default_factory=list)
    propagate_down: list = field(default_factory=list)
    param_keys: list = field(default_factory=list)   # (owner layer, blob index) per learned blob
    lr_mults: list = field(default_factory=list)
    decay_mults: list = field(default_factory=list)
    is_input: bool = False
    need_backward: bool = False


@dataclass
class Graph:
    name: str
    phase: int
    nodes: list
    blob_shapes: dict                # blob name -> shape, in creation order (Caffe's net.blobs order)
    inputs: list                     # blob names fed from outside, in layer order
    outputs: list                    # blobs no later layer consumes, sorted (Caffe's std::set order)
    param_shapes: dict               # owner layer -> [shape, ...]
    param_fillers: dict              # owner layer -> [FillerParameter or None, ...]
    state_shapes: dict               # layer -> [shape, ...] (BatchNorm statistics)
    learnable: list                  # (layer, index) of every owned learned blob, Caffe order
    blob_need_backward: dict
    force_backward: bool = False
    # layer -> [shape, ...] carried from one pass to the next, never saved (LSTM/RNN h, c)
    carried_shapes: dict = field(default_factory=dict)

    def node(self, name):
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def lr_mults(self):
        return {(k[0], k[1]): m for n in self.nodes for k, m in zip(n.param_keys, n.lr_mults)}


def state_meets_rule(state, rule):
    """Caffe's ``Net::StateMeetsRule``."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_layers(net, state):
    """The layers of ``net`` that the ``NetState`` keeps (Caffe's ``Net::FilterNet``)."""
    kept = []
    for lp in net.layer:
        if lp.include and lp.exclude:
            raise NetspecError(f'layer "{lp.name}": specify either include or exclude rules, not both')
        if lp.include:
            keep = any(state_meets_rule(state, r) for r in lp.include)
        else:
            keep = not any(state_meets_rule(state, r) for r in lp.exclude)
        if keep:
            kept.append(lp)
    return kept


def _input_shapes_from_layer(lp):
    shapes = [tuple(int(d) for d in s.dim) for s in lp.input_param.shape]
    if len(shapes) == 1:
        shapes = shapes * len(lp.top)
    if len(shapes) != len(lp.top):
        raise NetspecError(f'layer "{lp.name}" (Input): gives {len(shapes)} shapes for '
                           f'{len(lp.top)} tops; give one shape, or one per top')
    return shapes


def build_graph(net, phase=TRAIN, level=0, stages=(), input_shapes=None, host_layers=None,
                make_impl=None):
    """Check and shape the net for ``phase``.

    ``input_shapes``: shapes for blobs fed from outside (overriding what Input layers
    declare).  ``host_layers``: names of layers run on the host (Python data layers)
    whose tops are inputs; their shapes must be in ``input_shapes``.  ``make_impl``:
    optional ``(node, bottom_shapes) -> Layer`` hook for layer types the registry
    cannot build alone (Python layers in the middle of a net).
    """
    from .proto import caffe_pb2

    input_shapes = dict(input_shapes or {})
    host_layers = set(host_layers or ())
    state = caffe_pb2.NetState()
    state.CopyFrom(net.state)
    state.phase = phase
    state.level = level
    del state.stage[:]
    state.stage.extend(stages)

    nodes, shapes, inputs = [], {}, []
    available = []                  # blobs produced and not yet consumed, in order
    need_backward = {}
    param_owner = {}                # ParamSpec.name -> (layer, index, shape)
    param_shapes, param_fillers, state_shapes, learnable = {}, {}, {}, []
    carried_shapes = {}

    for lp in filter_layers(net, state):
        lp = _with_automatic_top(lp, host_layers)
        node = Node(name=lp.name, type=lp.type, lp=lp, bottoms=list(lp.bottom), tops=list(lp.top))
        for i, b in enumerate(node.bottoms):
            if b not in shapes:
                raise NetspecError(f'layer "{lp.name}" ({lp.type}): unknown bottom blob "{b}" '
                                   f'(bottom {i}); no earlier layer produces it')
            if b in available:
                available.remove(b)
        bottom_shapes = [shapes[b] for b in node.bottoms]

        if lp.type in INPUT_TYPES or lp.name in host_layers:
            node.is_input = True
            declared = _input_shapes_from_layer(lp) if lp.type == "Input" else [None] * len(node.tops)
            top_shapes = []
            for t, s in zip(node.tops, declared):
                s = input_shapes.get(t, s)
                if s is None:
                    raise NetspecError(f'layer "{lp.name}" ({lp.type}): no shape known for top "{t}"')
                top_shapes.append(_check_input_shape(lp, t, tuple(int(d) for d in s)))
                inputs.append(t)
        else:
            if make_impl is not None:
                node.impl = make_impl(node, bottom_shapes, phase)
            with _shape_errors(lp, bottom_shapes):
                if node.impl is None:
                    node.impl = layer_class(lp.type, lp.name)(lp, bottom_shapes, phase)
                top_shapes = [tuple(s) for s in node.impl.top_shapes()]
                state = [tuple(s) for s in node.impl.state_shapes()]
                carried = [tuple(s) for s in node.impl.carried_shapes()]
            _assign_params(node, lp, param_owner, param_shapes, param_fillers, learnable)
            if state:
                state_shapes[lp.name] = state
            if carried:
                carried_shapes[lp.name] = carried
            for t, s in zip(node.tops, top_shapes):
                if any(isinstance(d, Integral) and d < 0 for d in s):
                    raise NetspecError(f'layer "{lp.name}" ({lp.type}): top "{t}" would have shape {s}, '
                                       f'with a negative size, from bottom shapes {bottom_shapes}; '
                                       'check its kernel, stride, pad and axis settings')

        # in-place and duplicate tops
        for t in node.tops:
            if t in shapes and t not in node.bottoms and t != AUTOMATIC_TOP:
                raise NetspecError(f'layer "{lp.name}" ({lp.type}): top blob "{t}" is already '
                                   'produced by an earlier layer (only in-place reuse is allowed)')
        for t, s in zip(node.tops, top_shapes):
            if t in node.bottoms and shapes[t] != s:
                raise NetspecError(f'layer "{lp.name}" ({lp.type}): in-place top "{t}" changes shape '
                                   f'{shapes[t]} -> {s}')
            shapes[t] = s
            if t in available:
                available.remove(t)
            if t != AUTOMATIC_TOP:      # anonymous tops are never net outputs (Caffe)
                available.append(t)

        node.loss_weights = _loss_weights(node, lp)
        node.propagate_down = _propagate_down(node, lp)
        node.need_backward = (net.force_backward
                              or any(need_backward.get(b, False) for b in node.bottoms)
                              or any(m != 0 for m in node.lr_mults))
        for t in node.tops:
            need_backward[t] = node.need_backward and not node.is_input
        nodes.append(node)

    return Graph(name=net.name, phase=phase, nodes=nodes, blob_shapes=shapes, inputs=inputs,
                 outputs=sorted(available), param_shapes=param_shapes, param_fillers=param_fillers,
                 state_shapes=state_shapes, learnable=learnable, blob_need_backward=need_backward,
                 force_backward=net.force_backward, carried_shapes=carried_shapes)


class _shape_errors:
    """Shape inference of one layer: an arithmetic or indexing failure inside a layer's
    setup (a zero-sized axis, an axis out of range, ...) that the layer does not check
    itself becomes a one-line NetspecError naming the layer and its bottom shapes."""

    def __init__(self, lp, bottom_shapes):
        self.lp, self.bottom_shapes = lp, bottom_shapes

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None or issubclass(kind, NetspecError) or not issubclass(
                kind, (ArithmeticError, ValueError, IndexError)):
            return False
        reason = " ".join(str(error).split()) or kind.__name__
        raise NetspecError(f'layer "{self.lp.name}" ({self.lp.type}): cannot set up for bottom shapes '
                           f'{self.bottom_shapes} ({kind.__name__}: {reason})') from error


def _check_input_shape(lp, top, shape):
    """Caffe's ``Blob::Reshape`` check: no negative sizes."""
    if any(d < 0 for d in shape):
        raise NetspecError(f'layer "{lp.name}" ({lp.type}): top "{top}" has shape {shape}, '
                           'with a negative size; sizes must be >= 0')
    return shape


def _with_automatic_top(lp, host_layers):
    """Caffe's AutoTopBlobs: a loss layer given no top gets an anonymous "(automatic)" one,
    so its loss (weight 1 by default) still counts."""
    if lp.top or lp.type in INPUT_TYPES or lp.name in host_layers:
        return lp
    try:
        is_loss = layer_class(lp.type, lp.name).is_loss
    except NetspecError:
        return lp
    if not is_loss:
        return lp
    from .proto import caffe_pb2
    with_top = caffe_pb2.LayerParameter()
    with_top.CopyFrom(lp)
    with_top.top.append(AUTOMATIC_TOP)
    return with_top


def _assign_params(node, lp, param_owner, param_shapes, param_fillers, learnable):
    """Own or share each learned blob (``ParamSpec.name``) and read its lr/decay multipliers."""
    impl = node.impl
    shapes = [tuple(s) for s in impl.param_shapes()]
    fillers = list(impl.param_fillers())
    # Caffe counts BatchNorm's statistics as layer blobs, so its prototxts carry a
    # ParamSpec (lr_mult 0) for each of them too
    stored = len(shapes) + len(impl.state_shapes())
    if len(lp.param) > stored:
        raise NetspecError(f'layer "{lp.name}" ({lp.type}): has {len(lp.param)} param specs but '
                           f'only {stored} blobs')
    for spec in list(lp.param)[len(shapes):]:
        if spec.lr_mult != 0:
            raise NetspecError(f'layer "{lp.name}" ({lp.type}): its statistics blobs are not learned; '
                               'set lr_mult: 0 in their param specs')
    owned_shapes, owned_fillers = [], []
    for i, shape in enumerate(shapes):
        spec = lp.param[i] if i < len(lp.param) else None
        lr = spec.lr_mult if spec is not None else 1.0
        decay = spec.decay_mult if spec is not None else 1.0
        shared_name = spec.name if spec is not None and spec.name else None
        if shared_name and shared_name in param_owner:
            shared = param_owner[shared_name]
            owner, index, owner_shape = shared["owner"], shared["index"], shared["shape"]
            strict = spec.share_mode == 0
            if (strict and owner_shape != shape) or (not strict and count(owner_shape) != count(shape)):
                raise NetspecError(f'layer "{lp.name}" ({lp.type}): shared param "{shared_name}" has '
                                   f'shape {shape} here but {owner_shape} in layer "{owner}"')
            _share_multiplier(shared, spec, "lr_mult", lp)
            _share_multiplier(shared, spec, "decay_mult", lp)
            node.param_keys.append((owner, index))
        else:
            index = len(owned_shapes)
            owned_shapes.append(shape)
            owned_fillers.append(fillers[i] if i < len(fillers) else None)
            node.param_keys.append((lp.name, index))
            learnable.append((lp.name, index))
            if shared_name:
                param_owner[shared_name] = {
                    "owner": lp.name, "index": index, "shape": shape, "node": node,
                    "position": i, "lr_mult": spec.HasField("lr_mult"),
                    "decay_mult": spec.HasField("decay_mult")}
        node.lr_mults.append(float(lr))
        node.decay_mults.append(float(decay))
    if owned_shapes:
        param_shapes[lp.name] = owned_shapes
        param_fillers[lp.name] = owned_fillers


def _share_multiplier(shared, spec, field, lp):
    """Caffe's ``Net::AppendParam`` for a shared blob: the owner's lr/decay multiplier
    unless it left it unset, then the first sharing layer's that sets it; explicit
    values that disagree are an error."""
    if not spec.HasField(field):
        return
    owner_node, position = shared["node"], shared["position"]
    values = owner_node.lr_mults if field == "lr_mult" else owner_node.decay_mults
    value = float(getattr(spec, field))
    if shared[field]:
        if values[position] != value:
            raise NetspecError(f'layer "{lp.name}" ({lp.type}): shared param "{spec.name}" has '
                               f'{field} {value:g} here but {values[position]:g} in layer '
                               f'"{shared["owner"]}"; give it the same {field} everywhere')
        return
    values[position] = value
    shared[field] = True


def _loss_weights(node, lp):
    if lp.loss_weight:
        if len(lp.loss_weight) != len(node.tops):
            raise NetspecError(f'layer "{lp.name}" ({lp.type}): loss_weight must be given once per '
                               f'top ({len(node.tops)}), got {len(lp.loss_weight)}')
        return [float(w) for w in lp.loss_weight]
    weights = [0.0] * len(node.tops)
    if node.impl is not None and node.impl.is_loss and weights:
        weights[0] = 1.0
    return weights


def _propagate_down(node, lp):
    if lp.propagate_down:
        if len(lp.propagate_down) != len(node.bottoms):
            raise NetspecError(f'layer "{lp.name}" ({lp.type}): propagate_down must be given once '
                               f'per bottom ({len(node.bottoms)}), got {len(lp.propagate_down)}')
        return [bool(p) for p in lp.propagate_down]
    return [True] * len(node.bottoms)

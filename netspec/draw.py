"""Net drawings with Graphviz, as pycaffe's ``caffe.draw`` makes them.

The functions and their arguments are pycaffe's, so BVLC's ``python/draw_net.py`` runs
with ``import netspec as caffe``::

    from netspec.proto import caffe_pb2
    import netspec as caffe
    caffe.draw.draw_net_to_file(net_param, "net.png", "LR", phase=caffe.TEST)

The drawing: every layer is a box labelled with its name, its type (and pool method)
and its key parameters (kernel size, stride and pad of convolutions and poolings,
``num_output``, dilation and group when they are not 1, global pooling, dropout ratio,
learning-rate multipliers with ``display_lrm``); every blob is a grey oval.  In-place
layers (a single bottom that is also their top, e.g. ReLU) are folded as Caffe's
``draw.py`` folds them: no new blob node, a green box hanging on the blob.  Colours
follow Caffe's (convolutions red, pooling orange, inner products purple, others blue).
``phase`` keeps the layers whose include/exclude rules admit that phase (only the
phase of a rule counts, as in Caffe's ``draw.py``); ``None`` draws them all.

Rendering needs Graphviz's ``dot`` program; ``ext`` ``dot``/``gv``/``raw`` gives the
DOT source, which needs nothing.
"""
import os
import shutil

from .errors import NetspecError

LAYER_STYLE = {"shape": "box", "style": "filled", "fillcolor": "#6495ED"}
NEURON_LAYER_STYLE = {"shape": "box", "style": "filled", "fillcolor": "#90EE90"}
BLOB_STYLE = {"shape": "oval", "style": "filled", "fillcolor": "#E0E0E0"}
LAYER_COLOURS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                 "InnerProduct": "#CC33FF"}
#: ``ext`` values that give the DOT source itself (no Graphviz needed)
SOURCE_FORMATS = ("dot", "gv", "raw")

INSTALL_GRAPHVIZ = ("install Graphviz to render drawings (apt-get install graphviz, brew install graphviz "
                    "or conda install graphviz), or write .dot and render it elsewhere")


def _pydot():
    try:
        import pydot
    except ImportError:
        raise NetspecError("drawing nets needs pydot: pip install pydot") from None
    return pydot


def _quote(text):
    """A DOT double-quoted string (pydot writes attribute values as they are given)."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def get_pooling_types_dict():
    """``{number: name}`` of ``PoolingParameter.PoolMethod`` (pycaffe's helper)."""
    from .proto import caffe_pb2
    return {v.number: k for k, v in caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values_by_name.items()}


def get_edge_label(layer):
    """The label of a layer's edges to its tops: batch size of Data layers, ``num_output``
    of convolutions and inner products, else empty (Caffe's)."""
    if layer.type == "Data":
        return str(layer.data_param.batch_size)
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return ""


def get_layer_lr_mult(layer):
    """``(weights lr_mult, bias lr_mult)`` of a Convolution, Deconvolution or InnerProduct layer."""
    if layer.type not in ("Convolution", "Deconvolution", "InnerProduct"):
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    mults = [p.lr_mult if p.HasField("lr_mult") else 1.0 for p in layer.param]
    if len(mults) > 2:
        raise ValueError("Could not parse the learning rate multiplier")
    mults += [1.0] * (2 - len(mults))
    return tuple(mults)


def _size(values, h=None, w=None, default=None):
    """A spatial parameter as text: ``3``, or ``3x5`` when height and width differ."""
    if h is not None and w is not None:
        return str(h) if h == w else f"{h}x{w}"
    values = list(values)
    if not values:
        return None if default is None else str(default)
    return str(values[0]) if len(set(values)) == 1 else "x".join(str(v) for v in values)


def _spatial_descriptors(layer):
    if layer.type == "Pooling":
        p = layer.pooling_param
        if p.global_pooling:
            return ["global"]
        kernel = _size([p.kernel_size], *((p.kernel_h, p.kernel_w) if p.HasField("kernel_h") else ()))
        stride = _size([p.stride], *((p.stride_h, p.stride_w) if p.HasField("stride_h") else ()))
        pad = _size([p.pad], *((p.pad_h, p.pad_w) if p.HasField("pad_h") else ()))
        return [f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]
    p = layer.convolution_param
    kernel = _size(p.kernel_size, *((p.kernel_h, p.kernel_w) if p.HasField("kernel_h") else ()), default=1)
    stride = _size(p.stride, *((p.stride_h, p.stride_w) if p.HasField("stride_h") else ()), default=1)
    pad = _size(p.pad, *((p.pad_h, p.pad_w) if p.HasField("pad_h") else ()), default=0)
    out = [f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]
    dilation = _size(p.dilation, default=1)
    if dilation != "1":
        out.append(f"dilation: {dilation}")
    if p.group != 1:
        out.append(f"group: {p.group}")
    return out


def get_layer_label(layer, rankdir, display_lrm=False):
    """A layer's box label: name, ``(type)``, key parameters; lines for left-right
    drawings, one line with spaces for top-bottom ones (Caffe's rule)."""
    separator = " " if rankdir in ("TB", "BT") else "\n"
    parts = [layer.name]
    if layer.type == "Pooling":
        parts.append(f"({layer.type} {get_pooling_types_dict()[layer.pooling_param.pool]})")
    else:
        parts.append(f"({layer.type})")
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        parts.append(separator.join(_spatial_descriptors(layer)))
    if layer.type in ("Convolution", "Deconvolution"):
        parts.append(f"num_output: {layer.convolution_param.num_output}")
    elif layer.type == "InnerProduct":
        parts.append(f"num_output: {layer.inner_product_param.num_output}")
    elif layer.type == "Dropout":
        parts.append(f"ratio: {layer.dropout_param.dropout_ratio:g}")
    if display_lrm and layer.type in ("Convolution", "Deconvolution", "InnerProduct"):
        lrm0, lrm1 = get_layer_lr_mult(layer)
        if lrm0 or lrm1:
            parts.append(f"lr mult: {lrm0:.1f}, {lrm1:.1f}")
    return separator.join(parts)


def choose_color_by_layertype(layertype):
    """Caffe's fill colour of a layer type's box."""
    return LAYER_COLOURS.get(layertype, LAYER_STYLE["fillcolor"])


def _phase_number(phase):
    from .proto import caffe_pb2
    if phase is None or phase == "ALL":
        return None
    if isinstance(phase, str):
        if phase not in ("TRAIN", "TEST"):
            raise NetspecError(f'phase "{phase}": use TRAIN, TEST or ALL')
        return caffe_pb2.Phase.Value(phase)
    return int(phase)


def layer_in_phase(layer, phase):
    """Whether the drawing of ``phase`` (a number, or None: every layer) keeps ``layer``.
    Only the phase of include/exclude rules counts (Caffe's ``draw.py``)."""
    if phase is None:
        return True
    if layer.include and layer.exclude:
        raise NetspecError(f'layer "{layer.name}" has both include and exclude rules')

    def admits(rule):
        return not rule.HasField("phase") or rule.phase == phase
    if layer.include:
        return any(admits(rule) for rule in layer.include)
    return not any(rule.HasField("phase") and rule.phase == phase for rule in layer.exclude)


def _current_layers(caffe_net):
    """The net's ``layer``s; a legacy (V0/V1) net is upgraded first."""
    from .upgrade import net_needs_upgrade, upgrade_net
    if net_needs_upgrade(caffe_net):
        caffe_net = upgrade_net(caffe_net)
    return caffe_net.layer


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """The drawing of ``caffe_net`` (a ``caffe_pb2.NetParameter``) as a ``pydot.Dot`` graph.

    ``rankdir``: Graphviz's layout direction (LR, TB, BT, RL).  ``label_edges``: label a
    layer's edges to its tops with ``num_output`` (Data: batch size).  ``phase``:
    ``caffe.TRAIN``, ``caffe.TEST`` (or "TRAIN"/"TEST") keeps that phase's layers; None
    or "ALL" every layer.  ``display_lrm``: show learning-rate multipliers."""
    pydot = _pydot()
    phase = _phase_number(phase)
    graph = pydot.Dot(_quote(caffe_net.name or "Net"), graph_type="digraph", rankdir=rankdir)
    layer_nodes, blob_nodes, edges = [], {}, []

    def blob(name):
        if name not in blob_nodes:
            blob_nodes[name] = pydot.Node(_quote(f"blob {name}"), label=_quote(name), **BLOB_STYLE)
        return blob_nodes[name]

    for index, layer in enumerate(_current_layers(caffe_net)):
        if not layer_in_phase(layer, phase):
            continue
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        style = dict(NEURON_LAYER_STYLE if in_place else LAYER_STYLE)
        if not in_place:
            style["fillcolor"] = choose_color_by_layertype(layer.type)
        node = pydot.Node(_quote(f"layer {index} {layer.name}"),
                          label=_quote(get_layer_label(layer, rankdir, display_lrm)), **style)
        layer_nodes.append(node)
        for name in layer.bottom:
            edges.append((blob(name), node, ""))
        edge_label = get_edge_label(layer) if label_edges else ""
        for name in layer.top:
            edges.append((node, blob(name), edge_label))
    for node in layer_nodes + list(blob_nodes.values()):
        graph.add_node(node)
    for src, dst, label in edges:
        extra = {"label": _quote(label)} if label else {}
        graph.add_edge(pydot.Edge(src.get_name(), dst.get_name(), **extra))
    return graph


def dot_source(caffe_net, rankdir="LR", label_edges=True, phase=None, display_lrm=False):
    """The drawing's DOT source text (needs no Graphviz)."""
    return get_pydot_graph(caffe_net, rankdir, label_edges, phase, display_lrm).to_string()


def _render(graph, ext):
    prog = "dot"
    if shutil.which(prog) is None:
        raise NetspecError(f"Graphviz's {prog} program is not on PATH: {INSTALL_GRAPHVIZ}")
    try:
        return graph.create(prog=prog, format=ext)
    except FileNotFoundError:
        raise NetspecError(f"Graphviz's {prog} program did not run: {INSTALL_GRAPHVIZ}") from None
    except AssertionError:          # pydot reports dot's failures (an unknown format) this way
        raise NetspecError(f"Graphviz's {prog} could not render format {ext!r} ({prog} -T{ext} failed)") from None


def draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False):
    """The drawing rendered in format ``ext`` (png, svg, pdf, ...; dot/gv/raw: the DOT
    source), as bytes."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    if ext in SOURCE_FORMATS:
        return graph.to_string().encode()
    return _render(graph, ext)


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """Draw the net into ``filename``, in the format its extension names (``.dot``: the
    DOT source, no Graphviz needed)."""
    filename = os.fspath(filename)
    ext = filename[filename.rfind(".") + 1:] if "." in os.path.basename(filename) else ""
    if not ext:
        raise NetspecError(f"{filename}: give the file an extension naming the format (.png, .svg, .pdf, .dot)")
    data = draw_net(caffe_net, rankdir, ext.lower(), phase, display_lrm)
    with open(filename, "wb") as f:
        f.write(data)

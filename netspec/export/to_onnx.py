"""ONNX export of a net's TEST graph, with Caffe's exact semantics.

``write(net, path, input_shapes)`` writes an ONNX model (opset 18) of a ``netspec.Net``
in TEST phase, with its current weights, for fixed input shapes; ``check(net, path,
inputs)`` runs it in onnxruntime (CPU) and returns its largest deviation from
``net.forward``.

Naming: graph inputs and outputs are the net's input and output blobs; every tensor
that holds a Caffe blob is named after it.  Caffe rewrites blobs in place (``ReLU``
with top = bottom); ONNX needs each tensor written once, so the *final* value of a
blob (what ``net.blobs[name]`` holds after a pass) has the plain name and earlier
values are named ``<blob>@<layer that produced them>`` (an input blob keeps its name,
its later in-place values get the suffix).  Initializers are the layers' blobs,
named ``<layer>/<index>`` in Caffe's ``layer.blobs`` order (a shared parameter under
its owner's name; BatchNorm's statistics after the learned blobs).  Helper constants
and intermediate tensors are named ``<layer>/<what>``.

The model is specialised to the export's input shapes (Caffe's output-size rules,
pooling divisors and reshapes are resolved at export time), which is what makes the
pooling and reshaping exact.
"""
import os

import numpy as np

from ..errors import NetspecError
from ..layers.base import TEST

OPSET = 18
FLT_MAX = float(np.finfo(np.float32).max)

SUPPORTED = (
    "AbsVal", "ArgMax", "BNLL", "BatchNorm", "Bias", "Clip", "Concat", "Convolution", "Crop",
    "Deconvolution", "Dropout", "ELU", "Eltwise", "Embed", "Exp", "Flatten", "InnerProduct",
    "Input", "LRN", "Log", "MVN", "PReLU", "Pooling", "Power", "ReLU", "Reduction", "Reshape",
    "Scale", "Sigmoid", "Silence", "Slice", "Softmax", "Split", "Swish", "TanH", "Threshold",
    "Tile",
)
_NOT_DEPLOY = ("Accuracy",)


def _import_onnx(runtime=False):
    """The onnx module (and onnxruntime), or a one-line error saying how to install them."""
    try:
        import onnx
        ort = None
        if runtime:
            import onnxruntime as ort
    except ImportError:
        raise NetspecError("ONNX export needs onnx and onnxruntime: pip install 'netspec[export]'") \
            from None
    return (onnx, ort) if runtime else onnx


def _error(node, message):
    return NetspecError(f'layer "{node.name}" ({node.type}): {message}')


class _Builder:
    """Collects nodes, initializers and names for one ONNX graph."""

    def __init__(self, onnx, net, graph):
        self.onnx, self.h, self.nh = onnx, onnx.helper, onnx.numpy_helper
        self.net, self.graph = net, graph
        self.nodes, self.initializers, self.value_infos = [], [], []
        self.used = set()
        self.current = {}           # Caffe blob -> ONNX tensor holding its current value
        self._initialized = set()

    # -- names --------------------------------------------------------------
    def fresh(self, base):
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def const(self, layer, what, value, dtype=np.float32):
        name = self.fresh(f"{layer}/{what}")
        self.initializers.append(self.nh.from_array(np.asarray(value, dtype), name))
        return name

    def param(self, node, i):
        """The initializer of the ``i``-th blob of ``node`` (Caffe's layer.blobs order)."""
        if i < len(node.param_keys):
            owner, index = node.param_keys[i]
        else:
            owner, index = node.name, i
        name = f"{owner}/{index}"
        if name not in self._initialized:
            value = self.net.params[node.name][i].numpy()
            self.initializers.append(self.nh.from_array(np.asarray(value, np.float32), name))
            self._initialized.add(name)
            self.used.add(name)
        return name

    def op(self, op_type, inputs, layer, what=None, outputs=None, **attrs):
        """Add a node; returns its single output name (or the list given as ``outputs``)."""
        if outputs is None:
            out = [self.fresh(f"{layer}/{what or op_type}")]
        else:
            out = list(outputs)
        self.nodes.append(self.h.make_node(op_type, list(inputs), out,
                                           name=self.fresh(f"{layer}/{what or op_type}#node"),
                                           **attrs))
        return out[0] if outputs is None else out

    def reshape(self, x, shape, layer, what="reshape", output=None):
        shape_name = self.const(layer, f"{what}_shape", list(shape), np.int64)
        outs = None if output is None else [output]
        return self.op("Reshape", [x, shape_name], layer, what, outputs=outs)


def _tensor_names(graph):
    """ONNX names for each (layer index, top index): SSA names for in-place blobs."""
    producers = {}
    for li, node in enumerate(graph.nodes):
        for ti, t in enumerate(node.tops):
            producers.setdefault(t, []).append((li, ti))
    names = {}
    inputs = set(graph.inputs)
    for blob, prods in producers.items():
        plain = prods[0] if blob in inputs else prods[-1]
        for li, ti in prods:
            names[(li, ti)] = blob if (li, ti) == plain else f"{blob}@{graph.nodes[li].name}"
    return names


def _pool_pads(size, out, kernel, stride, pad):
    """(begin, end) padding so that ONNX's floor-mode pooling gives exactly ``out`` windows
    starting at -pad, stride apart: the end padding is what the last window needs (0 when
    it ends inside the image; floor rounding then drops the cells Caffe never reads)."""
    end = (out - 1) * stride + kernel - size - pad
    return pad, max(end, 0)


def _ave_divisor(size, out, kernel, stride, pad):
    """Caffe's AVE pool_size along one axis: the window clipped to the padded extent."""
    start = np.arange(out) * stride - pad
    return np.minimum(start + kernel, size + pad) - start


def _export_pooling(b, node, x, out_name):
    impl = node.impl
    from ..layers.vision import PoolingParameter
    if len(node.tops) != 1:
        raise _error(node, "the MAX pooling mask top cannot be exported to ONNX; drop the second top")
    pp = node.lp.pooling_param
    name = node.name
    n, c, h, w = impl.bottom_shapes[0]
    is_max = impl.method == PoolingParameter.MAX
    if pp.global_pooling:
        return b.op("GlobalMaxPool" if is_max else "GlobalAveragePool", [x], name,
                    outputs=[out_name])[0]
    sizes, kernel, stride, pad, out = (h, w), impl.kernel, impl.stride, impl.pad, impl.out_hw
    pads = [_pool_pads(*args) for args in zip(sizes, out, kernel, stride, pad)]
    begin, end = [p[0] for p in pads], [p[1] for p in pads]
    if is_max:
        # windows with no image cell give -FLT_MAX in Caffe (-inf padding gives -inf here)
        empty = any(((np.arange(o) * s - p + k) <= 0).any() or ((np.arange(o) * s - p) >= i).any()
                    for i, o, k, s, p in zip(sizes, out, kernel, stride, pad))
        if all(v < k for v, k in zip(begin + end, list(kernel) * 2)):
            y = b.op("MaxPool", [x], name, kernel_shape=list(kernel), strides=list(stride),
                     pads=begin + end, outputs=None if empty else [out_name])
        else:   # onnxruntime wants pads smaller than the kernel
            padded = b.op("Pad", [x, b.const(name, "pads", [0, 0] + begin + [0, 0] + end, np.int64),
                                  b.const(name, "pad_value", -np.inf)], name, "pad")
            y = b.op("MaxPool", [padded], name, kernel_shape=list(kernel), strides=list(stride),
                     outputs=None if empty else [out_name])
        if empty:
            y = b.op("Max", [y, b.const(name, "neg_flt_max", -FLT_MAX)], name, "floor",
                     outputs=[out_name])[0]
        return y
    # AVE: the sum over the zero-padded window (explicit padding, AveragePool times k*k),
    # divided by Caffe's pool_size, which counts the padding but not the overhang past it
    divisor = np.outer(_ave_divisor(h, out[0], kernel[0], stride[0], pad[0]),
                       _ave_divisor(w, out[1], kernel[1], stride[1], pad[1])).astype(np.float64)
    area = kernel[0] * kernel[1]
    exact = bool(np.all(divisor == area))
    if any(begin + end):
        x = b.op("Pad", [x, b.const(name, "pads", [0, 0] + begin + [0, 0] + end, np.int64)],
                 name, "pad")
    y = b.op("AveragePool", [x], name, kernel_shape=list(kernel), strides=list(stride),
             outputs=[out_name] if exact else None)
    if exact:
        return y[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = (area / divisor).astype(np.float32)
    return b.op("Mul", [y, b.const(name, "divisor_correction", factor[None, None])], name,
                "correct", outputs=[out_name])[0]


def _per_channel(b, node, tensor, ndim, what):
    """A (C,) tensor unsqueezed to broadcast over axis 1 of an ``ndim``-axis blob."""
    if ndim <= 2:
        return tensor
    axes = b.const(node.name, f"{what}_axes", list(range(1, ndim - 1)), np.int64)
    return b.op("Unsqueeze", [tensor, axes], node.name, f"{what}_per_channel")


def _export_node(b, node, xs, outs):
    """Add the ONNX nodes computing ``node``'s tops ``outs`` from its bottoms ``xs``."""
    t, name, impl = node.type, node.name, node.impl
    ndim = len(impl.bottom_shapes[0]) if impl is not None and impl.bottom_shapes else 0
    x = xs[0] if xs else None
    out = outs[0] if outs else None

    def single(op_type, inputs, **attrs):
        b.op(op_type, inputs, name, outputs=[out], **attrs)

    if t in ("Convolution", "Deconvolution"):
        if impl.axis != 1:
            raise _error(node, "only axis 1 convolutions can be exported")
        inputs = [b.param(node, 0)] + ([b.param(node, 1)] if impl.bias_term else [])
        attrs = dict(kernel_shape=list(impl.kernel), strides=list(impl.stride),
                     pads=list(impl.pad) * 2, dilations=list(impl.dilation), group=impl.group)
        for xi, oi in zip(xs, outs):
            b.op("Conv" if t == "Convolution" else "ConvTranspose", [xi] + inputs, name,
                 outputs=[oi], **attrs)
    elif t == "Pooling":
        _export_pooling(b, node, x, out)
    elif t == "LRN":
        if impl.across:
            # Caffe: x * (k + alpha/n * sum of squares over n channels)^-beta = ONNX LRN
            single("LRN", [x], size=impl.size, alpha=impl.alpha, beta=impl.beta, bias=impl.k)
        else:
            # Caffe's WITHIN_CHANNEL: x * (1 + alpha * avepool(x^2))^-beta, pad (n-1)/2,
            # stride 1: every window lies inside the padded extent, so the divisor is n*n
            half = (impl.size - 1) // 2
            sq = b.op("Mul", [x, x], name, "square")
            pooled = b.op("AveragePool", [sq], name, kernel_shape=[impl.size] * 2,
                          strides=[1, 1], pads=[half] * 4, count_include_pad=1)
            scaled = b.op("Mul", [pooled, b.const(name, "alpha", impl.alpha)], name, "alpha_mul")
            base = b.op("Add", [scaled, b.const(name, "one", 1.0)], name, "one_add")
            scale = b.op("Pow", [base, b.const(name, "neg_beta", -impl.beta)], name, "pow")
            single("Mul", [x, scale])
    elif t == "InnerProduct":
        lead = impl.bottom_shapes[0][:impl.axis]
        flat = b.op("Flatten", [x], name, "flatten", axis=impl.axis)
        inputs = [flat, b.param(node, 0)] + ([b.param(node, 1)] if impl.bias_term else [])
        if impl.axis == 1:
            single("Gemm", inputs, transB=0 if impl.transpose else 1)
        else:
            y = b.op("Gemm", inputs, name, transB=0 if impl.transpose else 1)
            b.reshape(y, tuple(lead) + (impl.num_output,), name, output=out)
    elif t == "ReLU":
        if impl.negative_slope == 0.0:
            single("Relu", [x])
        else:
            single("LeakyRelu", [x], alpha=impl.negative_slope)
    elif t == "PReLU":
        slope = b.param(node, 0)
        if not impl.channel_shared:
            slope = _per_channel(b, node, slope, ndim, "slope")
        single("PRelu", [x, slope])
    elif t == "ELU":
        single("Elu", [x], alpha=impl.alpha)
    elif t == "Sigmoid":
        single("Sigmoid", [x])
    elif t == "TanH":
        single("Tanh", [x])
    elif t == "AbsVal":
        single("Abs", [x])
    elif t == "BNLL":
        single("Softplus", [x])
    elif t == "Power":
        shape = b.const(name, "shape", list(impl.bottom_shapes[0]), np.int64)
        if impl.power == 0.0 or impl.power * impl.scale == 0.0:
            value = 1.0 if impl.power == 0.0 else float(np.power(np.float32(impl.shift),
                                                                 np.float32(impl.power)))
            single("Expand", [b.const(name, "value", value), shape])
        else:
            z = x
            if impl.scale != 1.0:
                z = b.op("Mul", [z, b.const(name, "scale", impl.scale)], name, "scale_mul")
            if impl.shift != 0.0:
                z = b.op("Add", [z, b.const(name, "shift", impl.shift)], name, "shift_add")
            if impl.power == 1.0:
                single("Identity", [z])
            elif impl.power == 2.0:
                single("Mul", [z, z])
            else:
                single("Pow", [z, b.const(name, "power", impl.power)])
    elif t == "Exp":
        z = x if impl.inner_scale == 1.0 else \
            b.op("Mul", [x, b.const(name, "inner_scale", impl.inner_scale)], name, "inner_mul")
        if impl.outer_scale == 1.0:
            single("Exp", [z])
        else:
            e = b.op("Exp", [z], name)
            single("Mul", [e, b.const(name, "outer_scale", impl.outer_scale)])
    elif t == "Log":
        z = x
        if impl.scale != 1.0:
            z = b.op("Mul", [z, b.const(name, "scale", impl.scale)], name, "scale_mul")
        if impl.shift != 0.0:
            z = b.op("Add", [z, b.const(name, "shift", impl.shift)], name, "shift_add")
        if impl.base_scale == 1.0:
            single("Log", [z])
        else:
            y = b.op("Log", [z], name)
            single("Mul", [y, b.const(name, "base_scale", impl.base_scale)])
    elif t == "Threshold":
        g = b.op("Greater", [x, b.const(name, "threshold", impl.threshold)], name, "greater")
        single("Cast", [g], to=b.onnx.TensorProto.FLOAT)
    elif t == "Clip":
        # Caffe: max(min(x, max), min)
        m = b.op("Min", [x, b.const(name, "max", impl.high)], name, "min")
        single("Max", [m, b.const(name, "min", impl.low)])
    elif t == "Swish":
        z = x if impl.beta == 1.0 else b.op("Mul", [x, b.const(name, "beta", impl.beta)], name,
                                            "beta_mul")
        s = b.op("Sigmoid", [z], name)
        single("Mul", [x, s])
    elif t in ("Dropout", "Split"):
        for oi in outs:
            b.op("Identity", [x], name, outputs=[oi])
    elif t == "Silence":
        pass
    elif t == "BatchNorm":
        _export_batch_norm(b, node, x, out, ndim)
    elif t in ("Scale", "Bias"):
        operand_shape = impl.operand_shape
        broadcast = tuple(operand_shape) + (1,) * (ndim - impl.axis - len(operand_shape))
        if len(xs) == 2:
            operand = xs[1]
        else:
            operand = b.param(node, 0)
        if broadcast != tuple(operand_shape):
            operand = b.reshape(operand, broadcast, name, "operand")
        if t == "Bias":
            single("Add", [x, operand])
        elif impl.bias_term:
            bias = b.param(node, len(node.param_keys) - 1)
            if broadcast != tuple(operand_shape):
                bias = b.reshape(bias, broadcast, name, "bias")
            y = b.op("Mul", [x, operand], name)
            single("Add", [y, bias])
        else:
            single("Mul", [x, operand])
    elif t == "Eltwise":
        from ..layers.common import P
        op = impl.operation
        if op == P.EltwiseParameter.MAX:
            # Caffe's ties pick one of equal values: the same number
            y = xs[0]
            for k, xi in enumerate(xs[1:], start=1):
                y = b.op("Max", [y, xi], name, outputs=[out] if k == len(xs) - 1 else None)
                y = y[0] if k == len(xs) - 1 else y
        else:
            terms = list(xs)
            if op == P.EltwiseParameter.SUM:
                terms = [xi if c == 1.0 else b.op("Mul", [xi, b.const(name, f"coeff{k}", c)],
                                                  name, f"coeff{k}_mul")
                         for k, (xi, c) in enumerate(zip(xs, impl.coeffs))]
            kind = "Add" if op == P.EltwiseParameter.SUM else "Mul"
            y = terms[0]
            for k, term in enumerate(terms[1:], start=1):
                last = k == len(terms) - 1
                y = b.op(kind, [y, term], name, outputs=[out] if last else None)
                y = y[0] if last else y
    elif t == "Concat":
        if len(xs) == 1:
            single("Identity", [x])
        else:
            single("Concat", xs, axis=impl.axis)
    elif t == "Slice":
        sizes = [hi - lo for lo, hi in zip(impl.bounds, impl.bounds[1:])]
        if len(outs) == 1:
            single("Identity", [x])
        else:
            b.op("Split", [x, b.const(name, "split", sizes, np.int64)], name, outputs=outs,
                 axis=impl.axis)
    elif t in ("Flatten", "Reshape"):
        b.reshape(x, impl.top_shape, name, output=out)
    elif t == "Crop":
        axes = list(range(impl.axis, len(impl.out_shape)))
        starts = [impl.starts[a] for a in axes]
        ends = [impl.starts[a] + impl.out_shape[a] for a in axes]
        single("Slice", [x, b.const(name, "starts", starts, np.int64),
                         b.const(name, "ends", ends, np.int64), b.const(name, "axes", axes, np.int64)])
    elif t == "Softmax":
        single("Softmax", [x], axis=impl.axis)
    elif t == "ArgMax":
        _export_argmax(b, node, x, out)
    elif t == "Reduction":
        from ..layers.common import P
        op = impl.operation
        if op == P.ReductionParameter.ASUM:
            x = b.op("Abs", [x], name)
        elif op == P.ReductionParameter.SUMSQ:
            x = b.op("Mul", [x, x], name, "square")
        axes = b.const(name, "axes", list(range(impl.axis, ndim)), np.int64)
        if impl.coeff == 1.0:
            single("ReduceSum", [x, axes], keepdims=0)
        else:
            s = b.op("ReduceSum", [x, axes], name, keepdims=0)
            single("Mul", [s, b.const(name, "coeff", impl.coeff)])
    elif t == "Tile":
        reps = [1] * ndim
        reps[impl.axis] = impl.tiles
        single("Tile", [x, b.const(name, "repeats", reps, np.int64)])
    elif t == "Embed":
        # Caffe's indices: truncated to integers, clamped into [0, input_dim) (netspec)
        clipped = b.op("Clip", [x, b.const(name, "low", 0.0),
                                b.const(name, "high", float(impl.input_dim - 1))], name, "clip")
        index = b.op("Cast", [clipped], name, "index", to=b.onnx.TensorProto.INT64)
        if impl.bias_term:
            rows = b.op("Gather", [b.param(node, 0), index], name, axis=0)
            single("Add", [rows, b.param(node, 1)])
        else:
            single("Gather", [b.param(node, 0), index], axis=0)
    elif t == "MVN":
        shape = impl.shape
        if tuple(impl.bottom_shapes[0]) != shape:
            x = b.reshape(x, shape, name, "legacy")
        axes = b.const(name, "axes", [1, 2, 3] if impl.across_channels else [2, 3], np.int64)
        mean = b.op("ReduceMean", [x, axes], name, "mean", keepdims=1)
        centered = b.op("Sub", [x, mean], name, "centered",
                        outputs=None if impl.normalize_variance else [out])
        if impl.normalize_variance:
            sq = b.op("Mul", [centered, centered], name, "square")
            var = b.op("ReduceMean", [sq, axes], name, "var", keepdims=1)
            std = b.op("Add", [b.op("Sqrt", [var], name, "sqrt"), b.const(name, "eps", impl.eps)],
                       name, "std")
            single("Div", [centered, std])
    else:
        raise _error(node, "cannot be exported to ONNX; supported types: " + ", ".join(SUPPORTED))


def _export_batch_norm(b, node, x, out, ndim):
    impl, name = node.impl, node.name
    if impl.uses_global_stats(False):
        mean_sum, var_sum, factor = (b.param(node, i) for i in range(3))
        # Caffe: statistics = sums / scale_factor (0 when the factor is 0)
        zero = b.const(name, "zero", [0.0])
        is_zero = b.op("Equal", [factor, zero], name, "factor_is_zero")
        inv = b.op("Where", [is_zero, zero, b.op("Reciprocal", [factor], name, "inv_factor")],
                   name, "inv")
        mean = b.op("Mul", [mean_sum, inv], name, "mean")
        var = b.op("Mul", [var_sum, inv], name, "var")
        mean = _per_channel(b, node, mean, ndim, "mean")
        var = _per_channel(b, node, var, ndim, "var")
    else:   # use_global_stats: false in TEST: the batch's statistics
        axes = b.const(name, "axes", [a for a in range(ndim) if a != 1 or ndim == 1], np.int64)
        mean = b.op("ReduceMean", [x, axes], name, "mean", keepdims=1)
    centered = b.op("Sub", [x, mean], name, "centered")
    if not impl.uses_global_stats(False):
        sq = b.op("Mul", [centered, centered], name, "square")
        var = b.op("ReduceMean", [sq, axes], name, "var", keepdims=1)
    std = b.op("Sqrt", [b.op("Add", [var, b.const(name, "eps", impl.eps)], name, "var_eps")],
               name, "std")
    b.op("Div", [centered, std], name, outputs=[out])


def _export_argmax(b, node, x, out):
    """Caffe's ArgMax: top_k (value, index) pairs ranked with ties to the larger index, as
    netspec computes it: TopK (ties: smaller index first) on the reversed axis."""
    impl, name = node.impl, node.name
    shape = impl.bottom_shapes[0]
    if impl.axis is None:
        x = b.reshape(x, (shape[0], -1), name, "flat")
        axis, span = 1, int(np.prod(shape[1:], dtype=np.int64))
    else:
        axis, span = impl.axis, shape[impl.axis]
    big = np.iinfo(np.int64).max
    rev = b.op("Slice", [x, b.const(name, "rev_starts", [-1], np.int64),
                         b.const(name, "rev_ends", [-big], np.int64),
                         b.const(name, "rev_axes", [axis], np.int64),
                         b.const(name, "rev_steps", [-1], np.int64)], name, "reversed")
    values, flipped = b.op("TopK", [rev, b.const(name, "k", [impl.top_k], np.int64)], name,
                           outputs=[b.fresh(f"{name}/values"), b.fresh(f"{name}/flipped_index")],
                           axis=axis, largest=1, sorted=1)
    index = b.op("Sub", [b.const(name, "last", span - 1, np.int64), flipped], name, "index_int")
    index = b.op("Cast", [index], name, "index", to=b.onnx.TensorProto.FLOAT)
    if impl.axis is not None:
        b.op("Identity", [values if impl.out_max_val else index], name, outputs=[out])
        return
    stacked = b.op("Concat", [index, values], name, "stacked", axis=1) if impl.out_max_val \
        else index      # (N, 2k): indices then values, as Caffe's (N, 2, k)
    b.reshape(stacked, impl.top_shapes()[0], name, output=out)


def _build_model(onnx, net, graph):
    b = _Builder(onnx, net, graph)
    names = _tensor_names(graph)
    h = onnx.helper
    for blob in graph.inputs:
        b.used.add(blob)
    for n in names.values():
        b.used.add(n)
    for node in graph.nodes:        # the parameter initializers' names
        for owner, index in node.param_keys:
            b.used.add(f"{owner}/{index}")
        for i in range(len(node.param_keys), len(net.params.get(node.name, ()))):
            b.used.add(f"{node.name}/{i}")
    graph_inputs = []
    for li, node in enumerate(graph.nodes):
        if node.is_input:
            if node.type != "Input":
                raise _error(node, "is a data layer; export the deploy prototxt (Input layers)")
            for ti, top in enumerate(node.tops):
                b.current[top] = names[(li, ti)]
                graph_inputs.append(h.make_tensor_value_info(
                    names[(li, ti)], onnx.TensorProto.FLOAT, list(graph.blob_shapes[top])))
            continue
        if node.impl.is_loss or node.type in _NOT_DEPLOY:
            raise _error(node, "is a loss/accuracy layer; ONNX export takes a deploy net: "
                               "export the deploy prototxt (no labels, losses or accuracy)")
        if node.type not in SUPPORTED:
            raise _error(node, "cannot be exported to ONNX; supported types: " + ", ".join(SUPPORTED))
        xs = [b.current[bottom] for bottom in node.bottoms]
        outs = [names[(li, ti)] for ti in range(len(node.tops))]
        _export_node(b, node, xs, outs)
        for ti, top in enumerate(node.tops):
            b.current[top] = outs[ti]
            b.value_infos.append(h.make_tensor_value_info(
                outs[ti], onnx.TensorProto.FLOAT, list(graph.blob_shapes[top])))
    outputs = [h.make_tensor_value_info(b.current[o], onnx.TensorProto.FLOAT,
                                        list(graph.blob_shapes[o])) for o in graph.outputs]
    output_names = {o.name for o in outputs}
    value_infos = [v for v in b.value_infos if v.name not in output_names]
    onnx_graph = h.make_graph(b.nodes, graph.name or "net", graph_inputs, outputs,
                              initializer=b.initializers, value_info=value_infos)
    model = h.make_model(onnx_graph, opset_imports=[h.make_opsetid("", OPSET)],
                         producer_name="netspec")
    model.ir_version = min(model.ir_version, 10)
    return model


def _graph_for(net, input_shapes):
    if net.phase != TEST:
        raise NetspecError("ONNX export takes a TEST-phase net: build it with netspec.Net(prototxt, "
                           "weights, netspec.TEST)")
    shapes = {name: tuple(net.blobs[name].shape) for name in net.graph.inputs}
    for name, shape in (input_shapes or {}).items():
        if name not in shapes:
            raise NetspecError(f'ONNX export: "{name}" is not an input of the net (inputs: '
                               f'{", ".join(net.graph.inputs)})')
        shapes[name] = tuple(int(d) for d in shape)
    return net.graph_for(shapes)


def write(net, out_path, input_shapes=None):
    """Write ``net`` (a TEST-phase ``netspec.Net`` with its weights) as an ONNX model for
    ``input_shapes`` (``{input blob: shape}``; default: the input blobs' current shapes);
    returns a one-line description."""
    onnx = _import_onnx()
    graph = _graph_for(net, input_shapes)
    model = _build_model(onnx, net, graph)
    if model.ByteSize() < 2 ** 31 - 1:
        data = model.SerializeToString()        # once: checked and written as is
        onnx.checker.check_model(data, full_check=True)
        with open(out_path, "wb") as f:
            f.write(data)
    else:   # protobuf's 2 GiB limit: the weights go to a side file
        onnx.save(model, str(out_path), save_as_external_data=True,
                  location=os.path.basename(str(out_path)) + ".data")
        onnx.checker.check_model(str(out_path), full_check=True)
    shapes = ", ".join(f"{i} {tuple(graph.blob_shapes[i])}" for i in graph.inputs)
    return (f"ONNX opset {OPSET}: {len(model.graph.node)} nodes from {len(graph.nodes)} layers, "
            f"{len(model.graph.initializer)} initializers; inputs {shapes}; outputs "
            f"{', '.join(graph.outputs)} -> {out_path}")


def check(net, out_path, inputs):
    """Run the ONNX model in onnxruntime (CPU) on ``inputs`` (``{name: float32 array}``) and
    return the largest absolute difference from ``net.forward(**inputs)`` over all outputs."""
    _, ort = _import_onnx(runtime=True)
    feeds = {k: np.ascontiguousarray(v, np.float32) for k, v in inputs.items()}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(out_path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    expected = {k: np.array(v) for k, v in net.forward(**feeds).items()}
    if len(names) != len(expected):
        raise NetspecError(f"ONNX check: the model has {len(names)} outputs ({', '.join(names)}), "
                           f"the net {len(expected)} ({', '.join(expected)})")
    # outputs in the net's order; an input blob rewritten in place is the one whose
    # ONNX output name has a suffix (the graph input keeps the plain name)
    got = dict(zip(expected, session.run(names, feeds)))
    worst = 0.0
    for name, want in expected.items():
        have = got[name]
        if have.shape != want.shape:
            raise NetspecError(f'ONNX check: output "{name}" has shape {have.shape}, the net '
                               f'gives {want.shape}')
        if want.size:
            diff = np.abs(have.astype(np.float64) - want.astype(np.float64))
            both_nan = np.isnan(have) & np.isnan(want)
            diff = np.where(both_nan, 0.0, diff)
            diff = np.where(np.isnan(diff), np.inf, diff)
            worst = max(worst, float(diff.max()))
    return worst

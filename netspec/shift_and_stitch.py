"""Shift-and-stitch is filter dilation (Long's thesis, Sec. 3.2.2; FCN paper Sec. 3.2).

A net whose output is subsampled by ``f`` can be made dense two ways:

- :func:`shift_and_stitch`: run the original net on the ``f**2`` inputs shifted by
  ``(dy, dx)``, ``0 <= dy, dx < f``, and interlace the outputs, so output ``(y, x)`` of
  shift ``(dy, dx)`` lands at ``(f*y + dy, f*x + dx)``;
- :func:`dilate_net` (the *a trous* trick): set the stride of a subsampling layer to 1
  and dilate every later filter by the accumulated factor, keeping the weights.

Rules of :func:`dilate_net` (``at``: the layers whose stride is removed, in net order):

- A named Convolution or Pooling of stride ``s`` gets stride 1; the factor ``F`` of the
  blobs after it is multiplied by ``s``.  Strides must be equal in H and W.
- Every later Convolution gets ``dilation *= F`` and ``pad *= F`` (the same windows on
  the ``F`` times denser grid).
- Every later Pooling (stride 1 after the change) needs dilated windows, which Caffe's
  Pooling does not have; it is written exactly with stock layers: ``k*k`` Crops of
  the bottom at offsets ``(i*F, j*F)`` to the size of a reference Pooling of kernel
  ``(k-1)*F + 1`` (which gives only the shape), merged by an Eltwise MAX (MAX
  pooling) or SUM with coefficients ``1/k**2`` (AVE pooling).  The layer's top keeps
  its name; such a pooling must have pad 0 (Crop cannot pad).  The result runs in
  BVLC Caffe as well.
- A strided Convolution/Pooling after the first dilated layer that is not in ``at``
  is an error: shift-and-stitch needs all later subsampling removed.  So are layers
  after it that look at neighbouring positions and cannot be dilated here
  (Deconvolution, InnerProduct, LRN within a channel, global pooling, Python, ...):
  dilate the net before its upsampling/classifier.  Crop offsets are multiplied by F;
  elementwise and channel-wise layers are unchanged.

Exactness: the dilated net's output at ``(f*y + dy, f*x + dx)`` equals the original
net's output ``(y, x)`` on the input shifted by ``(step*dy, step*dx)`` pixels, where
``f`` is the product of the removed strides and ``step`` the stride of the net before
the first dilated layer.  :func:`shift_and_stitch` with ``step`` computes exactly that
when the shifted inputs all have one size (it crops them to ``H - step*(f-1)``) and
no pooling window of the original net hangs over a border (choose the input size so
the shifts align); zero padding after the first dilated layer makes the two differ
near the borders (the shifted runs pad their own, smaller, grids), so the exact
equality holds everywhere for unpadded nets and in the interior otherwise.
"""
import numpy as np

from .errors import NetspecError

# layers that act on each position on its own: unchanged by dilation
POINTWISE_TYPES = frozenset([
    'AbsVal', 'BatchNorm', 'Bias', 'BNLL', 'Clip', 'Dropout', 'Eltwise', 'ELU', 'Exp', 'Log',
    'MVN', 'Power', 'PReLU', 'ReLU', 'Scale', 'Sigmoid', 'Split', 'Swish', 'TanH', 'Threshold',
    'Softmax', 'Concat', 'Slice', 'ArgMax', 'Silence', 'Input'])


def _square(values, what, layer):
    values = [int(v) for v in values]
    if len(set(values)) > 1:
        raise NetspecError(f'dilate: layer "{layer}": {what} {values} differs between H and W; '
                           'only equal strides/dilations are supported')
    return values[0] if values else None


def _conv_stride(lp):
    cp = lp.convolution_param
    if cp.HasField("stride_h") or cp.HasField("stride_w"):
        return _square([cp.stride_h, cp.stride_w], "stride", lp.name)
    return _square(cp.stride, "stride", lp.name) or 1


def _pool_geometry(lp):
    pp = lp.pooling_param
    kernel = ([pp.kernel_h, pp.kernel_w] if pp.HasField("kernel_h") else [pp.kernel_size] * 2)
    stride = ([pp.stride_h, pp.stride_w] if pp.HasField("stride_h") else [pp.stride] * 2)
    pad = ([pp.pad_h, pp.pad_w] if pp.HasField("pad_h") else [pp.pad] * 2)
    return [int(k) for k in kernel], _square(stride, "stride", lp.name), [int(p) for p in pad]


def _set_conv_stride_one(lp):
    cp = lp.convolution_param
    cp.ClearField("stride_h")
    cp.ClearField("stride_w")
    del cp.stride[:]


def _dilate_conv(lp, factor):
    cp = lp.convolution_param
    n = max(len(cp.kernel_size), 2 if cp.HasField("kernel_h") else 1)
    dilation = list(cp.dilation) or [1]
    if len(dilation) == 1:
        dilation = dilation * n
    del cp.dilation[:]
    cp.dilation.extend(d * factor for d in dilation)
    if cp.HasField("pad_h") or cp.HasField("pad_w"):
        cp.pad_h, cp.pad_w = cp.pad_h * factor, cp.pad_w * factor
    else:
        pads = [p * factor for p in cp.pad]
        del cp.pad[:]
        cp.pad.extend(pads)


def _dilated_pooling(lp, factor):
    """Stock layers computing ``lp`` (stride 1 now) with its window taps ``factor`` apart."""
    from .proto import caffe_pb2
    P = caffe_pb2.PoolingParameter
    pp = lp.pooling_param
    (kh, kw), _, pad = _pool_geometry(lp)
    if any(pad):
        raise NetspecError(f'dilate: layer "{lp.name}" (Pooling) has pad {pad} after a dilated layer; '
                           'dilated pooling is written with Crop layers, which cannot pad')
    if len(lp.top) != 1:
        raise NetspecError(f'dilate: layer "{lp.name}" (Pooling) has a mask top; not supported after dilation')
    if pp.pool not in (P.MAX, P.AVE):
        raise NetspecError(f'dilate: layer "{lp.name}": only MAX and AVE pooling can be dilated')
    bottom, top = lp.bottom[0], lp.top[0]
    layers = []
    ref = caffe_pb2.LayerParameter(name=f"{lp.name}/ref", type="Pooling", bottom=[bottom],
                                   top=[f"{lp.name}/ref"])
    ref.include.extend(lp.include)
    ref.exclude.extend(lp.exclude)
    ref.pooling_param.pool = P.MAX
    ref.pooling_param.kernel_h = (kh - 1) * factor + 1
    ref.pooling_param.kernel_w = (kw - 1) * factor + 1
    ref.pooling_param.stride = 1
    layers.append(ref)
    taps = []
    for i in range(kh):
        for j in range(kw):
            crop = caffe_pb2.LayerParameter(name=f"{lp.name}/tap{i}_{j}", type="Crop",
                                            bottom=[bottom, ref.top[0]], top=[f"{lp.name}/tap{i}_{j}"])
            crop.include.extend(lp.include)
            crop.exclude.extend(lp.exclude)
            crop.crop_param.axis = 2
            crop.crop_param.offset.extend([i * factor, j * factor])
            layers.append(crop)
            taps.append(crop.top[0])
    merge = caffe_pb2.LayerParameter(name=lp.name, type="Eltwise", bottom=taps, top=[top])
    merge.include.extend(lp.include)
    merge.exclude.extend(lp.exclude)
    if pp.pool == P.MAX:
        merge.eltwise_param.operation = caffe_pb2.EltwiseParameter.MAX
    else:
        merge.eltwise_param.operation = caffe_pb2.EltwiseParameter.SUM
        merge.eltwise_param.coeff.extend([1.0 / (kh * kw)] * len(taps))
    layers.append(merge)
    return layers


def dilate_net(net_param, at=("pool4", "pool5")):
    """A copy of ``net_param`` with the strides of the ``at`` layers removed and every later
    filter dilated (module docstring); layer names, and so the weights, are kept."""
    from .proto import caffe_pb2
    at = list(at)
    if not at:
        raise NetspecError("dilate: name at least one layer (--at)")
    names = [lp.name for lp in net_param.layer]
    for name in at:
        if name not in names:
            raise NetspecError(f'dilate: the net has no layer "{name}" (layers: {", ".join(names)})')
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    factor = {}                     # blob -> dilation factor of its grid
    for source in net_param.layer:
        lp = caffe_pb2.LayerParameter()
        lp.CopyFrom(source)
        spatial = [factor.get(b, 1) for b in lp.bottom]
        f = spatial[0] if spatial else 1
        if lp.type == "Crop":
            f = spatial[0]
            if len(spatial) > 1 and spatial[1] != f:
                raise NetspecError(f'dilate: layer "{lp.name}" (Crop) crops a blob of dilation {f} to one '
                                   f'of dilation {spatial[1]}; both must be dilated alike')
        elif len(set(spatial)) > 1:
            raise NetspecError(f'dilate: layer "{lp.name}" ({lp.type}) joins blobs of different dilations '
                               f'({", ".join(map(str, spatial))}); dilate every path alike')
        out_factor = f
        new_layers = [lp]
        if lp.type == "Convolution":
            stride = _conv_stride(lp)
            if lp.name in at:
                if stride == 1:
                    raise NetspecError(f'dilate: layer "{lp.name}" has stride 1; nothing to remove')
                _set_conv_stride_one(lp)
                out_factor = f * stride
            elif stride != 1 and f > 1:
                raise NetspecError(f'dilate: layer "{lp.name}" (Convolution, stride {stride}) follows a '
                                   f'dilated layer; add it to --at (all later subsampling must go)')
            if f > 1:
                _dilate_conv(lp, f)
        elif lp.type == "Pooling":
            if lp.pooling_param.global_pooling:
                if f > 1:
                    raise NetspecError(f'dilate: layer "{lp.name}" (global Pooling) follows a dilated layer')
            else:
                _, stride, _ = _pool_geometry(lp)
                if lp.name in at:
                    if stride == 1:
                        raise NetspecError(f'dilate: layer "{lp.name}" has stride 1; nothing to remove')
                    pp = lp.pooling_param
                    pp.ClearField("stride_h")
                    pp.ClearField("stride_w")
                    pp.stride = 1
                    out_factor = f * stride
                elif stride != 1 and f > 1:
                    raise NetspecError(f'dilate: layer "{lp.name}" (Pooling, stride {stride}) follows a '
                                       f'dilated layer; add it to --at (all later subsampling must go)')
                if f > 1:
                    new_layers = _dilated_pooling(lp, f)
        elif lp.name in at:
            raise NetspecError(f'dilate: layer "{lp.name}" is a {lp.type}; --at takes Convolution or '
                               'Pooling layers')
        elif lp.type == "Crop":
            if f > 1:
                offsets = [o * f for o in lp.crop_param.offset]
                del lp.crop_param.offset[:]
                lp.crop_param.offset.extend(offsets)
        elif lp.type == "LRN":
            if f > 1 and lp.lrn_param.norm_region == lp.lrn_param.WITHIN_CHANNEL:
                raise NetspecError(f'dilate: layer "{lp.name}" (LRN within channel) follows a dilated layer')
        elif lp.type not in POINTWISE_TYPES and f > 1:
            raise NetspecError(f'dilate: layer "{lp.name}" ({lp.type}) follows a dilated layer and cannot '
                               'be dilated; dilate the net before its upsampling or classifier layers')
        for top in lp.top:
            factor[top] = out_factor
        out.layer.extend(new_layers)
    return out


def shift_and_stitch(net, image, factor, step=1, blob=None, input_blob=None):
    """The dense output of ``net`` by shift-and-stitch: ``(C, factor*h, factor*w)``.

    Runs ``net`` (a :class:`netspec.Net`) on the ``factor**2`` crops
    ``image[:, step*dy : step*dy + L_h, step*dx : step*dx + L_w]`` (``L = size -
    step*(factor-1)``, so every run has one size) and puts output ``(y, x)`` of shift
    ``(dy, dx)`` at ``(factor*y + dy, factor*x + dx)``.  ``image``: ``(C, H, W)``,
    preprocessed; ``blob``: the output blob (default: the net's only output).
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3:
        raise NetspecError(f"shift_and_stitch: the image must be (C, H, W), got shape {image.shape}")
    factor, step = int(factor), int(step)
    if factor < 1 or step < 1:
        raise NetspecError("shift_and_stitch: factor and step must be >= 1")
    input_blob = input_blob or net.inputs[0]
    _, height, width = image.shape
    lh, lw = height - step * (factor - 1), width - step * (factor - 1)
    if lh < 1 or lw < 1:
        raise NetspecError(f"shift_and_stitch: a {height}x{width} image is too small for {factor}x{factor} "
                           f"shifts of {step} pixels")
    dense = None
    for dy in range(factor):
        for dx in range(factor):
            crop = image[:, step * dy:step * dy + lh, step * dx:step * dx + lw]
            outputs = net.forward(**{input_blob: crop[None]})
            name = blob or _only_output(outputs)
            out = np.asarray(outputs[name] if name in outputs else net.blobs[name].data)[0]
            if dense is None:
                dense = np.zeros((out.shape[0], factor * out.shape[1], factor * out.shape[2]), np.float32)
            dense[:, dy::factor, dx::factor] = out
    return dense


def _only_output(outputs):
    if len(outputs) != 1:
        raise NetspecError(f"shift_and_stitch: the net has outputs {', '.join(outputs)}; name one with blob=")
    return next(iter(outputs))

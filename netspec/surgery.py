"""Net surgery on weight dicts ``{layer_name: [array, ...]}`` in Caffe blob shapes.

The FCN recipe: take a classifier's weights, turn its fully connected layers into
convolutions (:func:`transplant`), initialise the upsampling Deconvolutions to
bilinear interpolation (:func:`interp_init`) and, when moving to a task with more
classes, grow a score layer (:func:`expand_score`).  Every function returns a new
dict and leaves its inputs untouched.
"""
import numpy as np

from netspec.errors import NetspecError


def bilinear_kernel(size):
    """A ``(size, size)`` float32 kernel that upsamples by bilinear interpolation.

    For upsampling by a factor f use ``size = 2 * f`` (with stride f, and pad f/2 or a crop).
    """
    if int(size) != size or size < 1:
        raise NetspecError(f"bilinear_kernel: size must be a positive integer, got {size!r}")
    size = int(size)
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    positions = np.arange(size, dtype=np.float64)
    profile = 1.0 - np.abs(positions - center) / factor
    return np.outer(profile, profile).astype(np.float32)


def bilinear_weights(channels_in, channels_out, size):
    """A Deconvolution weight ``(channels_in, channels_out, size, size)`` interpolating each channel on its own.

    Channel c feeds output c with :func:`bilinear_kernel` (zero elsewhere), so
    ``channels_in`` must equal ``channels_out``; with ``channels_out == 1`` every
    input channel feeds the single output (as the reference ``interp`` allows).
    """
    if channels_in != channels_out and channels_out != 1:
        raise NetspecError(f"bilinear_weights: {channels_in} input and {channels_out} output channels; "
                           "bilinear upsampling needs as many outputs as inputs (or a single output)")
    weights = np.zeros((channels_in, channels_out, size, size), np.float32)
    kernel = bilinear_kernel(size)
    for c in range(channels_in):
        weights[c, c if channels_out > 1 else 0] = kernel
    return weights


def _copy_blobs(weights):
    return {name: [np.array(blob, np.float32, copy=True) for blob in blobs] for name, blobs in weights.items()}


def transplant(new_weights, new_shapes, old_weights, suffix=""):
    """Copy parameters from ``old_weights`` into a net whose blob shapes are ``new_shapes``.

    Each old layer ``name`` goes to the new layer ``name + suffix``.  A blob of the
    same shape is copied; one of a different shape but the same element count is
    reshaped in C order (an InnerProduct ``(O, C*H*W)`` becomes the equivalent
    Convolution ``(O, C, H, W)``, exactly, because InnerProduct flattens C, H, W in
    that order); anything else is skipped.  New layers without a source keep their
    values from ``new_weights`` (which may be ``None``).

    Returns ``(weights, report)``: ``report`` has lists ``copied`` and ``coerced`` of
    ``(old_layer, blob_index, new_layer)`` and ``skipped`` of ``(old_layer, blob_index, reason)``.
    """
    weights = _copy_blobs(new_weights or {})
    report = {"copied": [], "coerced": [], "skipped": []}
    for old_name, old_blobs in old_weights.items():
        if not len(old_blobs):      # ReLU, pooling, ...: nothing to move
            continue
        new_name = old_name + suffix
        if new_name not in new_shapes:
            report["skipped"].append((old_name, None, f"no layer {new_name!r} in the new net"))
            continue
        target_shapes = [tuple(int(d) for d in shape) for shape in new_shapes[new_name]]
        blobs = weights.setdefault(new_name, [np.zeros(shape, np.float32) for shape in target_shapes])
        for i, old_blob in enumerate(old_blobs):
            old_blob = np.asarray(old_blob, np.float32)
            if i >= len(target_shapes):
                report["skipped"].append((old_name, i, f"{new_name!r} has only {len(target_shapes)} blobs"))
                continue
            shape = target_shapes[i]
            if old_blob.shape == shape:
                action = "copied"
            elif old_blob.size == int(np.prod(shape)):
                action = "coerced"
            else:
                report["skipped"].append((old_name, i, f"{old_blob.shape} has {old_blob.size} elements, "
                                                       f"{new_name!r} blob {i} {shape} needs {int(np.prod(shape))}"))
                continue
            while len(blobs) <= i:
                blobs.append(np.zeros(target_shapes[len(blobs)], np.float32))
            blobs[i] = old_blob.reshape(shape).copy()
            report[action].append((old_name, i, new_name))
    return weights, report


def format_report(report):
    """One line per transplant step, for printing."""
    lines = [f"copying {old}[{i}] -> {new}" for old, i, new in report["copied"]]
    lines += [f"coercing {old}[{i}] -> {new}" for old, i, new in report["coerced"]]
    lines += [f"dropping {old}" + (f"[{i}]" if i is not None else "") + f": {why}"
              for old, i, why in report["skipped"]]
    return lines


def _layer_blobs(weights, layer, function):
    if layer not in weights:
        raise NetspecError(f"{function}: no layer {layer!r} among the weights "
                           f"({', '.join(sorted(weights)) or 'none'})")
    return weights[layer]


def expand_score(weights, layer, num_classes, init="zero", copy_from=0):
    """Grow a score layer (Convolution or InnerProduct) to ``num_classes`` outputs.

    The existing output rows (weight axis 0, bias last axis) are kept; the new rows
    are zero (``init='zero'``) or copies of existing row ``copy_from`` (``init='copy'``,
    e.g. the background class).
    """
    if init not in ("zero", "copy"):
        raise NetspecError(f"expand_score: init must be 'zero' or 'copy', got {init!r}")
    weights = _copy_blobs(weights)
    blobs = _layer_blobs(weights, layer, "expand_score")
    old_classes = blobs[0].shape[0]
    if num_classes < old_classes:
        raise NetspecError(f"expand_score: layer {layer!r} already has {old_classes} outputs, "
                           f"more than the {num_classes} asked for")
    if init == "copy" and not 0 <= copy_from < old_classes:
        raise NetspecError(f"expand_score: copy_from={copy_from} is not one of {layer!r}'s {old_classes} outputs")
    for i, blob in enumerate(blobs):
        axis = 0 if i == 0 else blob.ndim - 1
        if blob.shape[axis] != old_classes:
            raise NetspecError(f"expand_score: blob {i} of {layer!r} has shape {blob.shape}, "
                               f"expected {old_classes} outputs on axis {axis}")
        grown_shape = list(blob.shape)
        grown_shape[axis] = num_classes
        grown = np.zeros(grown_shape, np.float32)
        old_rows = [slice(None)] * blob.ndim
        old_rows[axis] = slice(0, old_classes)
        grown[tuple(old_rows)] = blob
        if init == "copy":
            new_rows = [slice(None)] * blob.ndim
            new_rows[axis] = slice(old_classes, num_classes)
            grown[tuple(new_rows)] = np.expand_dims(np.take(blob, copy_from, axis=axis), axis)
        blobs[i] = grown
    return weights


def interp_init(weights, layer_names):
    """Set the weight of each named Deconvolution to bilinear interpolation (:func:`bilinear_weights`)."""
    weights = _copy_blobs(weights)
    for layer in layer_names:
        blobs = _layer_blobs(weights, layer, "interp_init")
        channels_in, channels_out, height, width = blobs[0].shape
        if height != width:
            raise NetspecError(f"interp_init: layer {layer!r} has a {height}x{width} kernel; "
                               "bilinear initialisation needs a square kernel")
        try:
            blobs[0] = bilinear_weights(channels_in, channels_out, height)
        except NetspecError as error:
            raise NetspecError(f"interp_init: layer {layer!r}: {error}") from None
    return weights

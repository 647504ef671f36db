"""Caffe's ``DataTransformer`` (``caffe/data_transformer.cpp``) on ``(C, H, W)`` arrays.

Per item, in Caffe's order: draw mirror (``Rand(2)``, only when ``mirror``), then the
crop offsets (TRAIN: ``h_off`` uniform in [0, H - crop], then ``w_off``; TEST: the
centre ``(H - crop) / 2``); the output is ``(value - mean) * scale`` in float32, with
the ``mean_file`` read at the uncropped position and ``mean_value`` per channel (one
value serves all channels), mirrored left-right when drawn.  A Datum's CHW values and
an OpenCV image's HWC pixels give the same element at each (c, h, w), so one
implementation serves both of Caffe's ``Transform`` paths.

Random draws come from a NumPy generator seeded from the layer name (and a fixed
default), so runs are reproducible; they are not Caffe's boost stream.
"""
import math
import zlib

import numpy as np

from ..errors import NetspecError

DEFAULT_SEED = 1701


def layer_rng(name, purpose):
    """A reproducible generator private to one layer and one use (transform, shuffle, skip)."""
    seed = np.random.SeedSequence([DEFAULT_SEED, zlib.crc32(name.encode("utf-8")),
                                   zlib.crc32(purpose.encode("utf-8"))])
    return np.random.Generator(np.random.PCG64(seed))


def rand_uint32(rng):
    """One draw of a 32-bit unsigned generator, as ``(*rng)()`` in Caffe."""
    return int(rng.integers(0, 1 << 32, dtype=np.uint64))


def read_mean_file(path, who):
    """A ``mean.binaryproto`` (a BlobProto) as ``(values float32, shape)``."""
    from .. import wire
    try:
        with open(path, "rb") as f:
            buffer = bytearray(f.read())
    except OSError as e:
        raise NetspecError(f"{who}: cannot read mean_file {path}: {e.strerror or e}") from None
    try:
        blob = wire.BlobDecoder(buffer).decode(0, len(buffer))
    except wire.WireError as e:
        raise NetspecError(f"{who}: mean_file {path} is not a binary BlobProto ({e}); write it with "
                           "netspec compute-image-mean") from None
    values = np.array(blob.values, np.float32)
    if any(d < 0 or d > 2 ** 31 - 1 for d in blob.shape):
        raise NetspecError(f"{who}: mean_file {path} has shape {tuple(blob.shape)}, with a dimension "
                           "outside [0, 2147483647]; write it with netspec compute-image-mean")
    count = math.prod(blob.shape) if blob.shape else 0    # exact: no int64 wrap-around
    if not blob.shape or count != values.size or count == 0:
        raise NetspecError(f"{who}: mean_file {path} holds {values.size} values for shape "
                           f"{tuple(blob.shape)}; write it with netspec compute-image-mean")
    return values, tuple(int(d) for d in blob.shape)


class DataTransformer:
    """``transform_param`` of layer ``name`` in ``phase`` (0 TRAIN, 1 TEST)."""

    def __init__(self, param, phase, name, layer_type="Data"):
        self.who = f'layer "{name}" ({layer_type})'
        self.phase = phase
        self.crop_size = int(param.crop_size)
        self.scale = np.float32(param.scale)
        self.mirror = bool(param.mirror)
        self.force_color, self.force_gray = bool(param.force_color), bool(param.force_gray)
        if self.force_color and self.force_gray:
            raise NetspecError(f"{self.who}: transform_param sets both force_color and force_gray; choose one")
        if param.HasField("mean_file") and len(param.mean_value):
            raise NetspecError(f"{self.who}: transform_param sets both mean_file and mean_value; choose one")
        self.mean = None
        self.mean_file = param.mean_file if param.HasField("mean_file") else None
        if self.mean_file is not None:
            values, shape = read_mean_file(self.mean_file, self.who)
            self.mean, self.mean_shape = values, shape
        self.mean_values = np.asarray(list(param.mean_value), np.float32)
        self.rng = layer_rng(name, "transform")

    # -- shapes -------------------------------------------------------------------------
    def _check(self, c, h, w, where):
        if c <= 0:
            raise NetspecError(f"{self.who}: {where} has no channels")
        if self.crop_size and (h < self.crop_size or w < self.crop_size):
            raise NetspecError(f"{self.who}: crop_size {self.crop_size} is larger than the {h}x{w} "
                               f"image of {where}; lower crop_size or resize the images")

    def infer_shape(self, chw_shape, where="the first record"):
        """Caffe's ``InferBlobShape`` for one item: ``(C, crop, crop)`` or ``(C, H, W)``."""
        c, h, w = chw_shape
        self._check(c, h, w, where)
        return (c, self.crop_size, self.crop_size) if self.crop_size else (c, h, w)

    def mean_image(self, c, h, w, where):
        """The mean file as a (C, H, W) array, checked against an item of that size."""
        shape = self.mean_shape
        trimmed = shape[len(shape) - 3:] if len(shape) >= 3 else shape
        if len(shape) < 3 or any(d != 1 for d in shape[:len(shape) - 3]) or tuple(trimmed) != (c, h, w):
            raise NetspecError(f"{self.who}: mean_file {self.mean_file} has shape {shape} but {where} is "
                               f"{c}x{h}x{w} (channels x height x width); compute the mean from the same "
                               "database (netspec compute-image-mean)")
        return self.mean.reshape(c, h, w)

    # -- the transform --------------------------------------------------------------------
    def draw(self, h, w):
        """``(mirror, h_off, w_off)`` for an item of height h, width w, drawn in Caffe's order."""
        do_mirror = self.mirror and int(self.rng.integers(0, 2)) == 1
        h_off = w_off = 0
        if self.crop_size:
            if self.phase == 0:
                h_off = int(self.rng.integers(0, h - self.crop_size + 1))
                w_off = int(self.rng.integers(0, w - self.crop_size + 1))
            else:
                h_off = (h - self.crop_size) // 2
                w_off = (w - self.crop_size) // 2
        return do_mirror, h_off, w_off

    def transform(self, chw, where="an item", out=None, expected=None):
        """One item ``(C, H, W)`` (uint8 or float32) -> float32 ``(C, crop|H, crop|W)``.
        ``expected``: the item shape the batch was shaped for (Caffe's CHECKs)."""
        c, h, w = chw.shape
        self._check(c, h, w, where)
        shape = self.infer_shape((c, h, w), where)
        if expected is not None and tuple(expected) != shape:
            raise NetspecError(f"{self.who}: {where} gives a {c}x{h}x{w} item but the batch was shaped "
                               f"{'x'.join(map(str, expected))} by its first item; all items of a batch must "
                               "have the same size (resize the images, or set crop_size)")
        mean = self.mean_image(c, h, w, where) if self.mean is not None else None
        if self.mean_values.size and self.mean_values.size not in (1, c):
            raise NetspecError(f"{self.who}: {self.mean_values.size} mean_values for {c} channels; "
                               "give one mean_value, or one per channel")
        do_mirror, h_off, w_off = self.draw(h, w)
        oh, ow = shape[1], shape[2]
        x = chw[:, h_off:h_off + oh, w_off:w_off + ow].astype(np.float32)
        if mean is not None:
            x = x - mean[:, h_off:h_off + oh, w_off:w_off + ow]
        elif self.mean_values.size:
            mv = np.broadcast_to(self.mean_values, (c,)) if self.mean_values.size == 1 else self.mean_values
            x = x - mv[:, None, None]
        x = x * self.scale
        if do_mirror:
            x = x[:, :, ::-1]
        if out is None:
            return np.ascontiguousarray(x, np.float32)
        out[...] = x
        return out

    def transform_blob(self, batch):
        """Caffe's ``Transform(Blob*, Blob*)`` on an (N, C, H, W) float array: the mean
        subtracted over the whole input, one mirror/crop draw for the whole batch,
        then ``* scale``."""
        n, c, h, w = batch.shape
        self._check(c, h, w, "the input blob")
        x = np.array(batch, np.float32)
        if self.mean is not None:
            x -= self.mean_image(c, h, w, "the input blob")
        if self.mean_values.size:
            if self.mean_values.size not in (1, c):
                raise NetspecError(f"{self.who}: {self.mean_values.size} mean_values for {c} channels")
            x -= (self.mean_values if self.mean_values.size == c else
                  np.broadcast_to(self.mean_values, (c,)))[None, :, None, None]
        do_mirror, h_off, w_off = self.draw(h, w)
        oh, ow = (self.crop_size, self.crop_size) if self.crop_size else (h, w)
        y = x[:, :, h_off:h_off + oh, w_off:w_off + ow]
        if do_mirror:
            y = y[:, :, :, ::-1]
        y = np.ascontiguousarray(y)
        if self.scale != 1:
            y *= self.scale
        return y

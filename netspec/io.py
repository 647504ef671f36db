"""pycaffe's ``caffe.io``: input preprocessing, image loading and proto/array conversion.

``import netspec as caffe`` makes this module ``caffe.io``, so scripts written for
pycaffe keep working::

    transformer = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_mean("data", mu)                # per-channel vector or (C, H, W) mean
    transformer.set_raw_scale("data", 255)
    transformer.set_channel_swap("data", (2, 1, 0))
    net.blobs["data"].data[...] = transformer.preprocess("data", caffe.io.load_image("cat.jpg"))

Every function computes what pycaffe's does, in the same order, with the same dtypes
and the same error messages.  pycaffe reads images with scikit-image and resizes them
with ``skimage.transform.resize``; netspec does not depend on scikit-image: images are
decoded with Pillow (as scikit-image's own readers do) and the resize is a transcription
of scikit-image's (see ``resize_image``) onto ``scipy.ndimage``.

The proto helpers work on ``netspec.proto.caffe_pb2`` messages, which are BVLC's
schema (wire-compatible with Caffe's files).
"""
import numpy as np

from .errors import NetspecError

__all__ = [
    "Transformer", "load_image", "resize_image", "oversample",
    "blobproto_to_array", "array_to_blobproto", "arraylist_to_blobprotovector_str",
    "blobprotovector_str_to_arraylist", "array_to_datum", "datum_to_array",
]


def _pb2():
    from .proto import caffe_pb2
    return caffe_pb2


# ---------------------------------------------------------------- proto <-> arrays
def blobproto_to_array(blob, return_diff=False):
    """A ``BlobProto``'s ``data`` (or ``diff`` with ``return_diff=True``) as a float64 array
    shaped by the legacy ``num/channels/height/width`` fields when any is set, else by
    ``shape.dim``."""
    # float64 as pycaffe's np.array(list of floats) (newer protobuf runtimes would give float32)
    values = np.array(blob.diff if return_diff else blob.data, dtype=np.float64)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return values.reshape(blob.num, blob.channels, blob.height, blob.width)
    return values.reshape(blob.shape.dim)


def array_to_blobproto(arr, diff=None):
    """An N-d array (and optionally its diff, of the same shape: not checked) as a
    ``BlobProto`` with ``shape.dim`` set."""
    blob = _pb2().BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(np.asarray(arr).astype(float).ravel().tolist())
    if diff is not None:
        blob.diff.extend(np.asarray(diff).astype(float).ravel().tolist())
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    """A list of arrays as a serialized ``BlobProtoVector`` (bytes)."""
    vector = _pb2().BlobProtoVector()
    vector.blobs.extend([array_to_blobproto(a) for a in arraylist])
    return vector.SerializeToString()


def blobprotovector_str_to_arraylist(str):   # noqa: A002 (pycaffe's parameter name)
    """A serialized ``BlobProtoVector`` as a list of arrays."""
    vector = _pb2().BlobProtoVector()
    vector.ParseFromString(str)
    return [blobproto_to_array(b) for b in vector.blobs]


def array_to_datum(arr, label=None):
    """A 3-d (C, H, W) array as a ``Datum``: uint8 arrays go to the ``data`` bytes, any
    other dtype to ``float_data``.  ``ValueError`` for other ranks, as in pycaffe."""
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = _pb2().Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).ravel().tolist())
    if label is not None:
        datum.label = label
    return datum


def datum_to_array(datum):
    """A ``Datum``'s values as a (C, H, W) array: uint8 from ``data`` when it is set, float64
    from ``float_data`` otherwise.  The label is ``datum.label``."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).copy().reshape(shape)
    return np.array(datum.float_data).astype(float).reshape(shape)


# ---------------------------------------------------------------- preprocessing
class Transformer:
    """Turns (H, W, K) images into net inputs and back (pycaffe's ``caffe.io.Transformer``).

    ``inputs``: ``{input_name: blob_shape}``, e.g. ``{"data": net.blobs["data"].data.shape}``.
    ``preprocess`` applies, in this order: cast to float32, resize to the blob's (H, W)
    when the image's differs, transpose, channel swap, ``*= raw_scale``, ``-= mean``,
    ``*= input_scale``; ``deprocess`` undoes them (except the resize).

    As in pycaffe the arithmetic is in place: a float32 image that needs no resize and
    no channel swap is scaled in the caller's own array, and the result is float32.
    """

    def __init__(self, inputs):
        self.inputs = inputs
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def _check_input(self, in_):
        if in_ not in self.inputs:
            raise NetspecError(f"{in_} is not one of the net inputs: {self.inputs}")

    def preprocess(self, in_, data):
        """(H', W', K) image -> (K, H, W) float32 net input for input ``in_``."""
        self._check_input(in_)
        caffe_in = data.astype(np.float32, copy=False)
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[channel_swap, :, :]
        if raw_scale is not None:
            caffe_in *= raw_scale
        if mean is not None:
            caffe_in -= mean
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_, data):
        """Undo ``preprocess`` (but not its resize): a (K, H, W) input -> (H, W, K) image.
        The array is squeezed first, as in pycaffe."""
        self._check_input(in_)
        decaf_in = data.copy().squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order):
        """Axis order applied to the image, e.g. ``(2, 0, 1)``: (H, W, K) -> (K, H, W)."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise NetspecError("Transpose order needs to have the same number of dimensions as the input.")
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """Channel order taken after the transpose, e.g. ``(2, 1, 0)``: RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise NetspecError("Channel swap needs to have the same number of dimensions as the input channels.")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Multiply the (transposed, swapped) image by ``scale`` before the mean is
        subtracted (255 for models trained on [0, 255] pixels)."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """The mean to subtract: a vector of one value per channel, or a (C, H, W) (or
        (H, W)) array; a full mean of another (H, W) than the input's is resized to it
        with ``resize_image`` (after scaling to [0, 1] and back), as in pycaffe."""
        self._check_input(in_)
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise ValueError("Mean shape invalid")
            if ms != self.inputs[in_][1:]:
                in_shape = self.inputs[in_][1:]
                m_min, m_max = mean.min(), mean.max()
                normal_mean = (mean - m_min) / (m_max - m_min)
                mean = resize_image(normal_mean.transpose((1, 2, 0)), in_shape[1:]).transpose((2, 0, 1)) \
                    * (m_max - m_min) + m_min
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply the input by ``scale`` after the mean is subtracted."""
        self._check_input(in_)
        self.input_scale[in_] = scale


# ---------------------------------------------------------------- images
# scikit-image's readers (its PIL plugin, and imageio's Pillow plugin since) turn these
# Pillow modes into arrays this way before ``img_as_float``.
def _pil_to_array(image, as_gray):
    mode = image.mode
    if mode == "P":
        # skimage's _palette_is_grayscale: the palette entries the image uses are gray
        palette = np.asarray(image.getpalette()).reshape(-1, 3)
        start, stop = image.getextrema()
        if np.allclose(np.diff(palette[start:stop + 1]), 0):
            image = image.convert("L")
        elif image.format == "PNG" and "transparency" in image.info:
            image = image.convert("RGBA")
        else:
            image = image.convert("RGB")
    elif mode == "1":
        image = image.convert("L")
    elif "A" in mode or mode == "RGBa" or mode == "La":
        image = image.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    if image.mode.startswith("I;16"):
        array = np.array(image).astype(np.uint16)
    elif image.mode == "I" and getattr(image, "format", None) == "PNG":
        array = np.array(image).astype(np.uint16)     # 16-bit PNGs open in mode "I"
    else:
        array = np.array(image)
    if array.ndim == 3 and as_gray:
        # skimage.color.rgb2gray: float image, alpha ignored, ITU-R 709 luma weights
        rgb = _img_as_float(array[..., :3])
        return rgb @ np.array([0.2125, 0.7154, 0.0721], dtype=rgb.dtype)
    return array


def _img_as_float(image):
    """skimage.img_as_float: unsigned integers to [0, 1], signed to [-1, 1], floats kept."""
    image = np.asarray(image)
    if image.dtype == np.float16:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.floating):
        return image
    if image.dtype == bool:
        return image.astype(np.float64)
    info = np.iinfo(image.dtype)
    if info.min == 0:
        return np.multiply(image, 1.0 / info.max, dtype=np.float64)
    return np.divide(image.astype(np.float64) + 0.5, info.max + 0.5)


def image_transformer(input_name, shape, mean=None, input_scale=None, raw_scale=None, channel_swap=None):
    """The ``Transformer`` that ``Classifier`` and ``Detector`` set up for HxWxK images:
    transpose (2, 0, 1), then each setting that is not None."""
    transformer = Transformer({input_name: shape})
    transformer.set_transpose(input_name, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(input_name, mean)
    if input_scale is not None:
        transformer.set_input_scale(input_name, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(input_name, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(input_name, channel_swap)
    return transformer


class ImageReadError(NetspecError, OSError):
    """An image file that is missing or does not decode: a one-line ``NetspecError``, and
    an ``OSError`` as the readers behind pycaffe's ``load_image`` raise."""


def load_image(filename, color=True):
    """Read an image file as float32 in [0, 1]: (H, W, 3) RGB when ``color`` (grayscale
    files are tiled to 3 channels, an alpha channel is dropped), else (H, W, 1)
    intensity (color files are converted with ``rgb2gray``'s weights
    0.2125 R + 0.7154 G + 0.0721 B).

    pycaffe's ``skimage.img_as_float(skimage.io.imread(filename, as_grey=not color))``,
    decoded with Pillow as scikit-image does: palettes are expanded (to gray when the
    palette is gray), 16-bit images are scaled by 1/65535, 8-bit by 1/255, EXIF
    orientation is not applied, and a multi-frame file gives its first frame.
    """
    from PIL import Image
    try:
        with Image.open(filename) as image:
            image.load()
            array = _pil_to_array(image, as_gray=not color)
    except FileNotFoundError:
        raise ImageReadError(f"{filename}: no such image file") from None
    except Exception as e:      # Pillow's decoders raise OSError, ValueError, SyntaxError, ...
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ImageReadError(f"{filename}: cannot read the image ({reason})") from None
    img = _img_as_float(array).astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def _skimage_resize(image, output_shape, order):
    """``skimage.transform.resize(image, output_shape, order=order, mode='constant')`` with
    its defaults (cval=0, clip=True, preserve_range=False, anti_aliasing=None) as
    scikit-image 0.19 to 0.26 compute it."""
    from scipy import ndimage
    output_shape = tuple(output_shape)
    if len(output_shape) > image.ndim:
        image = np.reshape(image, image.shape + (1,) * (len(output_shape) - image.ndim))
    elif len(output_shape) == image.ndim - 1:
        output_shape = output_shape + (image.shape[-1],)
    elif len(output_shape) < image.ndim:
        raise ValueError("output_shape length cannot be smaller than the image number of dimensions")
    input_shape, input_type = image.shape, image.dtype
    if input_type == np.float16:
        image = image.astype(np.float32)
    # anti-aliasing is on by default whenever an axis shrinks
    anti_aliasing = (input_type != bool
                     and not (np.issubdtype(input_type, np.integer) and order == 0)
                     and any(o < i for o, i in zip(output_shape, input_shape)))
    if input_type == bool and anti_aliasing:
        raise ValueError("anti_aliasing must be False for boolean images")
    factors = np.divide(input_shape, output_shape)
    if order is None:
        order = 0 if input_type == bool else 1
    if order < 0 or order > 5:
        raise ValueError("Spline interpolation order has to be in the range 0-5.")
    if input_type == bool and order != 0:
        raise ValueError("Input image dtype is bool. Interpolation is not defined with bool data type.")
    if order > 0:
        image = _img_as_float(image)
    # mode 'constant' is scipy's 'grid-constant': the image is extended by cval = 0
    if anti_aliasing:
        sigma = np.maximum(0, (factors - 1) / 2)
        filtered = ndimage.gaussian_filter(image, sigma, cval=0, mode="grid-constant")
    else:
        filtered = image
    out = ndimage.zoom(filtered, [1 / f for f in factors], order=order, mode="grid-constant",
                       cval=0, grid_mode=True)
    # clip=True: to the input's range (0 is inside it for the [0, 1] images used here,
    # otherwise widened to keep the cval, as scikit-image does)
    lo, hi = np.min(image), np.max(image)
    if np.isnan(lo):
        lo, hi = np.nanmin(image), np.nanmax(image)
        out_lo, out_hi = np.nanmin(out), np.nanmax(out)
    else:
        out_lo, out_hi = np.min(out), np.max(out)
    if not lo <= 0 <= hi and out_lo <= 0 <= out_hi:
        zero = image.dtype.type(0)
        lo, hi = min(lo, zero), max(hi, zero)
    np.clip(out, np.asarray(lo), np.asarray(hi), out=out)
    return out


def resize_image(im, new_dims, interp_order=1):
    """Resize an (H, W, K) image to ``new_dims`` = (height, width); returns float32.

    As pycaffe: a 1- or 3-channel image is scaled to [0, 1] by its min and max,
    resized as ``skimage.transform.resize(..., order=interp_order, mode='constant')``
    and scaled back (a constant image gives a constant result); other channel counts
    go through ``scipy.ndimage.zoom(im, (h/H, w/W, 1), order=interp_order)``.

    The scikit-image resize is transcribed from the scikit-image that pycaffe's users
    install today (0.19 and later, where ``resize`` is ``scipy.ndimage.zoom``-based;
    checked bit for bit against 0.26 on the same SciPy): when an axis shrinks, the image is
    first smoothed by a Gaussian of sigma ``(H/h - 1) / 2`` per axis (its
    ``anti_aliasing=None`` default; the scikit-image of pycaffe's own time did not smooth),
    then sampled by ``scipy.ndimage.zoom`` with ``grid_mode=True`` (pixel centres: input
    coordinate ``(y + 0.5) * H/h - 0.5``) and zero outside the image (``mode='constant'``,
    cval 0, so borders darken toward the image's minimum), and finally
    clipped to the input's range.
    """
    if im.shape[-1] == 1 or im.shape[-1] == 3:
        im_min, im_max = im.min(), im.max()
        if im_max > im_min:
            im_std = (im - im_min) / (im_max - im_min)
            resized_std = _skimage_resize(im_std, new_dims, order=interp_order)
            resized_im = resized_std * (im_max - im_min) + im_min
        else:
            # a constant image: avoid dividing by zero
            ret = np.empty((new_dims[0], new_dims[1], im.shape[-1]), dtype=np.float32)
            ret.fill(im_min)
            return ret
    else:
        from scipy import ndimage
        scale = tuple(np.array(new_dims, dtype=float) / np.array(im.shape[:2]))
        resized_im = ndimage.zoom(im, scale + (1,), order=interp_order)
    return resized_im.astype(np.float32)


def oversample(images, crop_dims):
    """The ten crops of each (H, W, K) image: the four corners (top-left, top-right,
    bottom-left, bottom-right), the centre, then the same five mirrored left-right.
    Returns a (10 N, h, w, K) float32 array."""
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    im_center = im_shape[:2] / 2.0

    h_indices = (0, im_shape[0] - crop_dims[0])
    w_indices = (0, im_shape[1] - crop_dims[1])
    crops_ix = np.empty((5, 4), dtype=int)
    k = 0
    for i in h_indices:
        for j in w_indices:
            crops_ix[k] = (i, j, i + crop_dims[0], j + crop_dims[1])
            k += 1
    # the centre box: truncated toward zero, as an assignment into an int array does
    crops_ix[4] = np.tile(im_center, (1, 2)) + np.concatenate([-crop_dims / 2.0, crop_dims / 2.0])
    crops_ix = np.tile(crops_ix, (2, 1))

    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]), dtype=np.float32)
    ix = 0
    for im in images:
        for y0, x0, y1, x1 in crops_ix:
            crops[ix] = im[y0:y1, x0:x1, :]
            ix += 1
        crops[ix - 5:ix] = crops[ix - 5:ix, :, ::-1, :].copy()   # the mirrors
    return crops

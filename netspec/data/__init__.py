"""Dataset layers of the FCN reference, as Caffe Python layers, and a synthetic dataset.

A prototxt names them exactly as with the reference code, e.g.
``python_param { module: "voc_layers" layer: "SBDDSegDataLayer" param_str: "{...}" }``;
the net loader finds ``voc_layers`` here when it is not on the user's path.

Every layer serves one image per forward pass (batch 1, at the image's own size):
the image as float32 BGR minus a mean, ``(1, 3, H, W)``, and its labels ``(1, 1, H, W)``
with 255 = void.  Training splits (split names containing ``train``) are sampled at
random with replacement from ``random.Random(seed)`` (default seed 1337); other
splits are read in order, wrapping around.  This module holds what they share.
"""
import ast
import os
import random

import numpy as np

from netspec.errors import NetspecError
from netspec.python_layer import Layer

#: Mean BGR pixel used for PASCAL VOC, SBD (and, rounded, PASCAL-Context).
VOC_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
DEFAULT_SEED = 1337
_COMMON_KEYS = ("split", "randomize", "seed")


def load_mat(path, layer):
    """Read a MATLAB ``.mat`` file (scipy is imported only here)."""
    require_file(path, layer)
    try:
        import scipy.io
    except ImportError:
        raise NetspecError(f"{layer}: reading {path} needs scipy (pip install scipy)") from None
    return scipy.io.loadmat(path)


def require_file(path, layer):
    if not os.path.isfile(path):
        raise NetspecError(f"{layer}: {path} not found; check the dataset directory in param_str")


def load_bgr_image(path, mean, layer):
    """An image file as a ``(3, H, W)`` float32 array: RGB -> BGR, minus ``mean`` (BGR)."""
    from PIL import Image

    require_file(path, layer)
    with Image.open(path) as image:
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixels = np.array(image, dtype=np.float32)
    bgr = pixels[:, :, ::-1]
    # mean as given: a float64 mean is subtracted in float64 then rounded, as the reference does
    return (bgr - mean).astype(np.float32).transpose(2, 0, 1)


def read_ids(path, layer):
    """The image ids of a split file, one per line."""
    require_file(path, layer)
    with open(path) as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise NetspecError(f"{layer}: split file {path} lists no images")
    return ids


class SegDataLayer(Layer):
    """Shared logic of the segmentation data layers: param_str, the index order, reshape/forward.

    A subclass sets ``dir_keys`` (required directory keys), ``extra_keys`` (other
    accepted keys), ``configure(params)``, ``split_path()`` (or ``image_ids()``),
    ``top_names()`` and ``load(top_name, image_id)``.
    """

    dir_keys = ()
    extra_keys = ()

    @property
    def _who(self):
        layer_name = getattr(self.layer_param, "name", "") if self.layer_param is not None else ""
        return f"layer {layer_name!r} ({type(self).__name__})" if layer_name else type(self).__name__

    def parse_params(self):
        """``param_str`` as a dict: a Python literal, checked against the accepted keys."""
        try:
            params = ast.literal_eval(self.param_str) if self.param_str.strip() else {}
        except (ValueError, SyntaxError):
            raise NetspecError(f"{self._who}: param_str {self.param_str!r} is not a Python dict literal "
                               "such as \"{'split': 'train'}\"") from None
        if not isinstance(params, dict):
            raise NetspecError(f"{self._who}: param_str must be a dict literal, got {type(params).__name__}")
        allowed = set(self.dir_keys) | set(_COMMON_KEYS) | set(self.extra_keys)
        for key in params:
            if key not in allowed:
                raise NetspecError(f"{self._who}: unknown param_str key {key!r}; "
                                   f"accepted keys: {', '.join(sorted(allowed))}")
        for key in (*self.dir_keys, "split"):
            if key not in params:
                raise NetspecError(f"{self._who}: param_str lacks the key {key!r}")
        return params

    def parse_mean(self, params, default):
        mean = params.get("mean", default)
        try:
            mean = np.asarray(mean)
            ok = mean.shape == (3,) and np.issubdtype(mean.dtype, np.number)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise NetspecError(f"{self._who}: param_str 'mean' must be three numbers (B, G, R), got {mean!r}")
        return mean.astype(mean.dtype if mean.dtype == np.float32 else np.float64)

    def setup(self, bottom, top):
        params = self.parse_params()
        self.split = str(params["split"])
        self.configure(params)
        if len(bottom) != 0:
            raise NetspecError(f"{self._who}: a data layer takes no bottom; remove its bottoms")
        if len(top) != len(self.top_names()):
            raise NetspecError(f"{self._who}: needs {len(self.top_names())} tops "
                               f"({', '.join(self.top_names())}), the prototxt gives {len(top)}")
        self.indices = self.image_ids()
        self.random = bool(params.get("randomize", True)) and "train" in self.split
        self.rng = random.Random(params.get("seed", DEFAULT_SEED))
        self.idx = self.pick_first()
        self.loaded = {}

    def image_ids(self):
        """The split's image ids, in order (default: the lines of ``split_path()``)."""
        return read_ids(self.split_path(), self._who)

    def pick_first(self):
        return self.rng.randint(0, len(self.indices) - 1) if self.random else 0

    def advance(self):
        if self.random:
            self.idx = self.rng.randint(0, len(self.indices) - 1)
        else:
            self.idx = (self.idx + 1) % len(self.indices)

    def reshape(self, bottom, top):
        image_id = self.indices[self.idx]
        for blob, top_name in zip(top, self.top_names()):
            array = self.load(top_name, image_id)
            self.loaded[top_name] = array
            blob.reshape(1, *array.shape)

    def forward(self, bottom, top):
        for blob, top_name in zip(top, self.top_names()):
            blob.data[...] = self.loaded[top_name]
        self.advance()

    def backward(self, top, propagate_down, bottom):
        pass

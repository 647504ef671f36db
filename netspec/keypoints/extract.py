"""Feature grids for the keypoint experiments: a convnet's layers, a HOG-like baseline,
and the synthetic set's oracle part features, all as ``{layer: (F (C, h, w), cy (h,), cx (w,))}``
with each feature's receptive-field centre in image (or box) pixel coordinates.

The convnet's grids come from ``netspec.features.dense_features(net, image, layers)``
and rf sizes from ``netspec.receptive_field``; :func:`dense_features` and
:func:`rf_geometry` here are a fallback for when those modules are absent (a chain of
Convolution/Pooling/elementwise layers; the rf centre of output cell ``i`` is
``offset + stride * i`` composed from the input) and agree with them on such nets.

Boxes: an instance's bounding box ``(xmin, ymin, w, h)`` is rescaled to ``size x size``
(bilinear; the part labels nearest); a box pixel ``u`` lies over image pixel
``xmin + (u + 0.5) * w / size - 0.5`` (``to_image``/``to_box``).
"""
import numpy as np
from PIL import Image

from ..errors import NetspecError

VOC_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
ELEMENTWISE = {"ReLU", "Dropout", "LRN", "BatchNorm", "Scale", "Bias", "PReLU", "ELU", "Sigmoid",
               "TanH", "AbsVal", "Power", "Split", "Eltwise", "MVN", "Swish", "Clip", "Threshold"}


# -- receptive-field geometry (stand-in for netspec.receptive_field) -------------------
def rf_geometry(net):
    """``{blob: (stride, offset, rf size)}`` per spatial blob of a chain net: cell ``i`` of
    the blob is centred on input pixel ``offset + stride * i`` and sees ``rf size`` pixels."""
    graph = net.graph if hasattr(net, "graph") else net
    geometry = {name: (1.0, 0.0, 1.0) for name in graph.inputs}
    for node in graph.nodes:
        if node.is_input or not node.bottoms:
            continue
        below = geometry.get(node.bottoms[0])
        if below is None:
            continue
        jump, offset, rf = below
        if node.type in ("Convolution", "Pooling"):
            if node.type == "Convolution":
                p = node.lp.convolution_param
                k = (p.kernel_h or (p.kernel_size[0] if p.kernel_size else 1))
                s = (p.stride_h or (p.stride[0] if p.stride else 1))
                pad = (p.pad_h or (p.pad[0] if p.pad else 0))
                d = p.dilation[0] if p.dilation else 1
            else:
                p = node.lp.pooling_param
                if p.global_pooling:
                    continue
                k, s, pad, d = (p.kernel_h or p.kernel_size), (p.stride_h or p.stride or 1), \
                    (p.pad_h or p.pad), 1
            k_eff = (k - 1) * d + 1
            out = (jump * s, offset + jump * ((k_eff - 1) / 2.0 - pad), rf + (k_eff - 1) * jump)
        elif node.type in ELEMENTWISE:
            out = below
        else:
            continue
        for top in node.tops:
            geometry[top] = out
    return geometry


def dense_features(net, image, layers):
    """Stand-in for ``netspec.features.dense_features``: ``image`` is the net's input
    ``(C, H, W)`` (preprocessed); returns ``{layer: (features (C, h, w), cy (h,), cx (w,))}``."""
    geometry = rf_geometry(net)
    data = net.inputs[0]
    out = net.forward(**{data: np.asarray(image, np.float32)[None]}, blobs=list(layers))
    result = {}
    for layer in layers:
        if layer not in geometry:
            raise NetspecError(f'keypoints: no receptive-field geometry for blob "{layer}" '
                               f"(a chain of Convolution/Pooling/elementwise layers is needed)")
        jump, offset, _ = geometry[layer]
        f = np.asarray(out[layer])[0]
        result[layer] = (f, offset + jump * np.arange(f.shape[1]), offset + jump * np.arange(f.shape[2]))
    return result


def _dense_features():
    try:
        from ..features import dense_features as real
        return real
    except ImportError:
        return dense_features


# -- boxes ---------------------------------------------------------------------------
def crop_box(array, bbox, size, resample=Image.BILINEAR):
    """``array`` (H, W[, 3]) uint8 -> its bbox rescaled to ``size x size``."""
    x, y, w, h = bbox
    im = Image.fromarray(np.asarray(array))
    return np.asarray(im.transform((size, size), Image.EXTENT, (x, y, x + w, y + h), resample))


def to_image(points, bbox, size):
    """Box coordinates ``(n, 2)`` (x, y) -> image coordinates."""
    x, y, w, h = bbox
    p = np.asarray(points, np.float64).reshape(-1, 2)
    return np.stack([x + (p[:, 0] + 0.5) * w / size - 0.5, y + (p[:, 1] + 0.5) * h / size - 0.5], -1)


def to_box(points, bbox, size):
    """Image coordinates ``(n, 2)`` (x, y) -> box coordinates."""
    x, y, w, h = bbox
    p = np.asarray(points, np.float64).reshape(-1, 2)
    return np.stack([(p[:, 0] + 0.5 - x) * size / w - 0.5, (p[:, 1] + 0.5 - y) * size / h - 0.5], -1)


# -- extractors ------------------------------------------------------------------------
class Extractor:
    """Feature grids of whole images and of boxes, cached per image / (instance, size)."""
    layers = ()
    rf_sizes = {}

    def __init__(self, dataset):
        self.dataset = dataset
        self._images, self._boxes = {}, {}

    def grids(self, array):
        raise NotImplementedError

    def image_array(self, image_id):
        return self.dataset.read_image(image_id)

    def box_array(self, instance, size):
        return crop_box(self.image_array(instance.image), instance.bbox, size)

    def image(self, image_id):
        if image_id not in self._images:
            self._images[image_id] = self.grids(self.image_array(image_id))
        return self._images[image_id]

    def box(self, instance, size):
        key = (instance.path or id(instance), size)
        if key not in self._boxes:
            self._boxes[key] = self.grids(self.box_array(instance, size))
        return self._boxes[key]

    def global_feature(self, instance, size, layer=None):
        """The flattened grid of ``layer`` (default: the last) on the box, for neighbours."""
        grids = self.box(instance, size)
        return np.asarray(grids[layer or self.layers[-1]][0], np.float64).ravel()


class NetExtractor(Extractor):
    """A net's layers (blob names); images go in as Caffe wants them (BGR, mean subtracted)."""

    def __init__(self, dataset, net, layers, mean_bgr=VOC_MEAN_BGR):
        super().__init__(dataset)
        self.net, self.layers = net, list(layers)
        self.mean = np.asarray(mean_bgr, np.float32)
        missing = [name for name in self.layers if name not in net.blobs]
        if missing:
            raise NetspecError(f"keypoints: the net has no blob {missing[0]!r} "
                               f"(blobs: {', '.join(net.blobs)})")
        try:
            from ..receptive_field import receptive_fields
            rfs = receptive_fields(net.graph)
            self.rf_sizes = {name: float(max(a.size for a in rfs[name])) for name in self.layers
                             if rfs.get(name)}
        except ImportError:
            geometry = rf_geometry(net)
            self.rf_sizes = {name: geometry[name][2] for name in self.layers if name in geometry}
        self._dense = _dense_features()

    def grids(self, rgb):
        x = (np.asarray(rgb, np.float32)[:, :, ::-1] - self.mean).transpose(2, 0, 1)
        return {k: (np.asarray(f, np.float32), np.asarray(cy, np.float64), np.asarray(cx, np.float64))
                for k, (f, cy, cx) in self._dense(self.net, x, self.layers).items()}


class HogExtractor(Extractor):
    """A HOG/SIFT-like baseline: per cell of ``stride`` pixels, a histogram of gradient
    orientations (9 unsigned bins, magnitude-weighted, over a ``2 * stride`` window,
    L2-normalised) and the window's mean colour; centres ``stride * i + (stride - 1) / 2``."""

    def __init__(self, dataset, stride=8, name="hog"):
        super().__init__(dataset)
        self.stride, self.layers = stride, [name]
        self.rf_sizes = {name: 2 * stride}

    def grids(self, rgb):
        from scipy.ndimage import uniform_filter
        rgb = np.asarray(rgb, np.float64) / 255.0
        grey = rgb.mean(-1)
        gy, gx = np.gradient(grey)
        magnitude = np.hypot(gx, gy)
        angle = np.mod(np.arctan2(gy, gx), np.pi)
        bins = np.minimum((angle / np.pi * 9).astype(int), 8)
        window = 2 * self.stride
        hist = np.stack([uniform_filter(magnitude * (bins == b), window, mode="constant") for b in range(9)])
        colour = np.stack([uniform_filter(rgb[..., c], window, mode="nearest") for c in range(3)])
        s = self.stride
        h, w = grey.shape[0] // s, grey.shape[1] // s
        iy = s * np.arange(h) + (s - 1) // 2
        ix = s * np.arange(w) + (s - 1) // 2
        hist = hist[:, iy][:, :, ix]
        hist = hist / (np.sqrt((hist ** 2).sum(0, keepdims=True)) + 1e-3)
        features = np.concatenate([hist, colour[:, iy][:, :, ix]]).astype(np.float32)
        centres = lambda n: s * np.arange(n) + (s - 1) / 2.0
        return {self.layers[0]: (features, centres(h), centres(w))}


class OracleExtractor(Extractor):
    """The synthetic set's part labels as features (one-hot per part, pooled per cell)."""

    def __init__(self, dataset, stride=8, name="oracle"):
        super().__init__(dataset)
        self.stride, self.layers = stride, [name]
        self.rf_sizes = {name: stride}

    def image_array(self, image_id):
        from .synthetic import read_parts
        return read_parts(self.dataset.root, image_id)

    def box_array(self, instance, size):
        return crop_box(self.image_array(instance.image), instance.bbox, size, Image.NEAREST)

    def grids(self, parts):
        from .synthetic import part_features
        return {self.layers[0]: part_features(parts, self.stride)}


def nearest_cell(cy, cx, x, y):
    """Index ``(i, j)`` of the grid cell whose rf centre is nearest to point ``(x, y)``."""
    return int(np.abs(np.asarray(cy) - y).argmin()), int(np.abs(np.asarray(cx) - x).argmin())

"""PASCAL VOC and SBD segmentation data layers (the FCN reference's ``voc_layers``).

param_str keys: ``voc_dir`` or ``sbdd_dir``, ``split``, optional ``mean`` (BGR, default
the VOC mean), ``randomize`` (default True; only splits named ``*train*`` are
randomised), ``seed`` (default 1337).  Tops: data, label.
"""
import os

import numpy as np

from netspec.data import VOC_MEAN_BGR, SegDataLayer, load_bgr_image, load_mat, require_file
from netspec.errors import NetspecError


class VOCSegDataLayer(SegDataLayer):
    """PASCAL VOC: ``ImageSets/Segmentation/{split}.txt``, ``JPEGImages/{id}.jpg``,
    ``SegmentationClass/{id}.png`` (palette indices, 255 = void border)."""

    dir_keys = ("voc_dir",)
    extra_keys = ("mean",)

    def configure(self, params):
        self.voc_dir = os.fspath(params["voc_dir"])
        self.mean = self.parse_mean(params, VOC_MEAN_BGR)

    def split_path(self):
        return os.path.join(self.voc_dir, "ImageSets", "Segmentation", f"{self.split}.txt")

    def top_names(self):
        return ("data", "label")

    def load(self, top_name, image_id):
        if top_name == "data":
            return load_bgr_image(os.path.join(self.voc_dir, "JPEGImages", f"{image_id}.jpg"), self.mean, self._who)
        return self.load_label(image_id)

    def load_label(self, image_id):
        from PIL import Image

        path = os.path.join(self.voc_dir, "SegmentationClass", f"{image_id}.png")
        require_file(path, self._who)
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise NetspecError(f"{self._who}: {path} is a {image.mode} image; labels must be a palette "
                                   "(or greyscale) PNG of class indices")
            label = np.array(image, dtype=np.uint8)
        return label[np.newaxis]


class SBDDSegDataLayer(VOCSegDataLayer):
    """SBD: ``{split}.txt``, ``img/{id}.jpg``, ``cls/{id}.mat`` (``GTcls.Segmentation``)."""

    dir_keys = ("sbdd_dir",)

    def configure(self, params):
        self.sbdd_dir = os.fspath(params["sbdd_dir"])
        self.mean = self.parse_mean(params, VOC_MEAN_BGR)

    def split_path(self):
        return os.path.join(self.sbdd_dir, f"{self.split}.txt")

    def load(self, top_name, image_id):
        if top_name == "data":
            return load_bgr_image(os.path.join(self.sbdd_dir, "img", f"{image_id}.jpg"), self.mean, self._who)
        return self.load_label(image_id)

    def load_label(self, image_id):
        path = os.path.join(self.sbdd_dir, "cls", f"{image_id}.mat")
        mat = load_mat(path, self._who)
        try:
            label = mat["GTcls"][0]["Segmentation"][0]
        except (KeyError, IndexError, ValueError):
            raise NetspecError(f"{self._who}: {path} has no GTcls.Segmentation field; is it an SBD cls file?") from None
        return np.asarray(label).astype(np.uint8)[np.newaxis]

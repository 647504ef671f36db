"""NYUDv2 data layer (the FCN reference's ``nyud_layers``), 40-class task of Gupta et al.

param_str keys: ``nyud_dir``, ``split``, ``tops`` (a list from ``color``, ``depth``,
``hha``, ``label``, one per top, in order), ``randomize``, ``seed``.
Layout: ``{split}.txt``, ``data/images/img_{id}.png``, ``data/depth/img_{id}.png``,
``data/hha/img_{id}.png``, ``segmentation/img_{id}.mat`` (variable ``segmentation``).
"""
import os

import numpy as np

from netspec.data import SegDataLayer, load_bgr_image, load_mat, require_file
from netspec.errors import NetspecError

NYUD_COLOR_MEAN_BGR = np.array((116.190, 97.203, 92.318), np.float32)
NYUD_HHA_MEAN = np.array((132.431, 94.076, 118.477), np.float32)
NYUD_LOG_DEPTH_MEAN = np.array((7.844,), np.float32)
NYUD_TOPS = ("color", "depth", "hha", "label")


def _load_float_png(path, layer):
    from PIL import Image

    require_file(path, layer)
    with Image.open(path) as image:
        return np.array(image, dtype=np.float32)


class NYUDSegDataLayer(SegDataLayer):
    """NYUDv2 color / depth / HHA inputs and 40-class labels (1..40 -> 0..39, 0 -> 255)."""

    dir_keys = ("nyud_dir",)
    extra_keys = ("tops",)

    def configure(self, params):
        self.nyud_dir = os.fspath(params["nyud_dir"])
        tops = params.get("tops")
        if not isinstance(tops, (list, tuple)) or not tops or any(t not in NYUD_TOPS for t in tops):
            raise NetspecError(f"{self._who}: param_str 'tops' must be a list drawn from "
                               f"{', '.join(NYUD_TOPS)}, got {tops!r}")
        self.tops = tuple(tops)

    def split_path(self):
        return os.path.join(self.nyud_dir, f"{self.split}.txt")

    def top_names(self):
        return self.tops

    def path(self, folder, image_id, ext="png"):
        return os.path.join(self.nyud_dir, *folder.split("/"), f"img_{image_id}.{ext}")

    def load(self, top_name, image_id):
        if top_name == "color":
            return load_bgr_image(self.path("data/images", image_id), NYUD_COLOR_MEAN_BGR, self._who)
        if top_name == "hha":
            # HHA channels are used in file order (no RGB -> BGR swap), as in the reference
            hha = _load_float_png(self.path("data/hha", image_id), self._who)
            return (hha - NYUD_HHA_MEAN).transpose(2, 0, 1)
        if top_name == "depth":
            depth = _load_float_png(self.path("data/depth", image_id), self._who)
            return (np.log(depth) - NYUD_LOG_DEPTH_MEAN)[np.newaxis]
        return self.load_label(image_id)

    def load_label(self, image_id):
        path = self.path("segmentation", image_id, "mat")
        mat = load_mat(path, self._who)
        if "segmentation" not in mat:
            raise NetspecError(f"{self._who}: {path} has no variable 'segmentation'")
        shifted = np.asarray(mat["segmentation"]).astype(np.int64) - 1
        shifted[shifted < 0] = 255
        return shifted.astype(np.uint8)[np.newaxis]

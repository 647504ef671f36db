"""SIFT Flow data layer (the FCN reference's ``siftflow_layers``).

param_str keys: ``siftflow_dir``, ``split``, optional ``mean`` (BGR, default
(114.578, 115.294, 108.353)), ``randomize``, ``seed``.  Tops: data, semantic label
(33 classes 0-32), geometric label (3 classes 0-2); 255 = void.
"""
import os

import numpy as np

from netspec.data import SegDataLayer, load_bgr_image, load_mat
from netspec.errors import NetspecError

SIFTFLOW_MEAN_BGR = np.array((114.578, 115.294, 108.353), np.float32)
_SUBDIR = "spatial_envelope_256x256_static_8outdoorcategories"


def shift_labels(raw):
    """Classes 1..K -> 0..K-1 and 0 (unlabelled) -> 255, as uint8."""
    shifted = np.asarray(raw).astype(np.int64) - 1
    shifted[shifted < 0] = 255
    return shifted.astype(np.uint8)


class SIFTFlowSegDataLayer(SegDataLayer):
    """SIFT Flow: ``{split}.txt``, ``Images/<subdir>/{id}.jpg``,
    ``SemanticLabels/<subdir>/{id}.mat`` and ``GeoLabels/<subdir>/{id}.mat`` (variable ``S``)."""

    dir_keys = ("siftflow_dir",)
    extra_keys = ("mean",)

    def configure(self, params):
        self.siftflow_dir = os.fspath(params["siftflow_dir"])
        self.mean = self.parse_mean(params, SIFTFLOW_MEAN_BGR)

    def split_path(self):
        return os.path.join(self.siftflow_dir, f"{self.split}.txt")

    def top_names(self):
        return ("data", "sem", "geo")

    def load(self, top_name, image_id):
        if top_name == "data":
            path = os.path.join(self.siftflow_dir, "Images", _SUBDIR, f"{image_id}.jpg")
            return load_bgr_image(path, self.mean, self._who)
        folder = "SemanticLabels" if top_name == "sem" else "GeoLabels"
        path = os.path.join(self.siftflow_dir, folder, _SUBDIR, f"{image_id}.mat")
        mat = load_mat(path, self._who)
        if "S" not in mat:
            raise NetspecError(f"{self._who}: {path} has no variable 'S'")
        raw = np.array(mat["S"])
        if top_name == "geo":
            raw[raw == -1] = 0  # a few geometric maps mark unlabelled pixels -1
        return shift_labels(raw)[np.newaxis]

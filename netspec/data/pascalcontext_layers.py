"""PASCAL-Context data layer (the FCN reference's ``pascalcontext_layers``), 59-class task.

param_str keys: ``voc_dir`` (the directory holding ``VOC2010``), ``context_dir`` (the
PASCAL-Context annotations: ``labels.txt``, ``59_labels.txt``, ``trainval/{id}.mat``
with variable ``LabelMap``), ``split`` (a ``VOC2010/ImageSets/Main/{split}.txt`` list),
optional ``mean``, ``randomize``, ``seed``.  Tops: data, label.

The full annotation uses several hundred classes numbered as in ``labels.txt``;
the task keeps the 59 of ``59_labels.txt`` (in that order, as 1..59) and maps every
other pixel to 0 = background.  Three task names differ from the full list's and
are matched by their full-list names (diningtable = table, bedcloth = bedclothes,
clothes = cloth).  There is no void label.
"""
import os

import numpy as np

from netspec.data import SegDataLayer, load_bgr_image, load_mat, require_file
from netspec.errors import NetspecError

CONTEXT_MEAN_BGR = np.array((104.007, 116.669, 122.679), np.float32)
TASK_TO_FULL_NAME = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}


def read_label_list(path, layer):
    """``{name: number}`` from lines ``number: name`` (spaces in names removed)."""
    require_file(path, layer)
    numbers = {}
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            number, sep, name = line.partition(":")
            if not sep or not number.strip().isdigit():
                raise NetspecError(f"{path}:{line_number}: expected 'number: name', got {line.strip()!r}")
            numbers[name.strip().replace(" ", "")] = int(number)
    return numbers


def context_label_map(full_labels, task_labels, layer="PASCALContextSegDataLayer"):
    """A lookup table: full-annotation number -> task class (1..59 in task order, else 0)."""
    task_names = sorted(task_labels, key=task_labels.get)
    table = np.zeros(max(full_labels.values()) + 1, np.uint8)
    for task_class, name in enumerate(task_names, 1):
        full_name = TASK_TO_FULL_NAME.get(name, name)
        if full_name not in full_labels:
            raise NetspecError(f"{layer}: task class {name!r} is not in the full label list (labels.txt)")
        table[full_labels[full_name]] = task_class
    return table


class PASCALContextSegDataLayer(SegDataLayer):
    """PASCAL-Context images from VOC2010 with labels mapped to the 59-class task."""

    dir_keys = ("voc_dir", "context_dir")
    extra_keys = ("mean",)

    def configure(self, params):
        self.voc_dir = os.path.join(os.fspath(params["voc_dir"]), "VOC2010")
        self.context_dir = os.fspath(params["context_dir"])
        self.mean = self.parse_mean(params, CONTEXT_MEAN_BGR)
        full = read_label_list(os.path.join(self.context_dir, "labels.txt"), self._who)
        task = read_label_list(os.path.join(self.context_dir, "59_labels.txt"), self._who)
        self.label_table = context_label_map(full, task, self._who)

    def split_path(self):
        return os.path.join(self.voc_dir, "ImageSets", "Main", f"{self.split}.txt")

    def top_names(self):
        return ("data", "label")

    def load(self, top_name, image_id):
        if top_name == "data":
            return load_bgr_image(os.path.join(self.voc_dir, "JPEGImages", f"{image_id}.jpg"), self.mean, self._who)
        path = os.path.join(self.context_dir, "trainval", f"{image_id}.mat")
        mat = load_mat(path, self._who)
        if "LabelMap" not in mat:
            raise NetspecError(f"{self._who}: {path} has no variable 'LabelMap'")
        full = np.asarray(mat["LabelMap"]).astype(np.int64)
        inside = (full >= 0) & (full < len(self.label_table))
        label = np.zeros(full.shape, np.uint8)
        label[inside] = self.label_table[full[inside]]
        return label[np.newaxis]

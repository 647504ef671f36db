"""Caffe's data layers, run on the host with pycaffe's Python-layer interface.

``Data`` (LMDB/LevelDB of Datums), ``ImageData`` (an image list), ``HDF5Data`` (a list
of .h5 files), ``MemoryData`` (arrays given by ``set_input_arrays``) and
``WindowData`` (R-CNN's window file) follow ``src/caffe/layers/*_data_layer.cpp``:
record order, wrap-around, per-epoch shuffles, batch shapes from the first item, and
``transform_param`` through ``DataTransformer``.  Each object's ``forward`` produces
one batch; the net runs it every pass (optionally on its prefetch thread).
Random choices (shuffles, skips, crops, mirrors, window sampling) follow Caffe's
distributions from generators seeded by the layer name, not Caffe's boost stream.

Multi-process training (``netspec.distributed``): in a TRAIN net, process ``i`` of
``P`` gets rows ``[i*N/P, (i+1)*N/P)`` of the batch one process would get.  Data,
ImageData, HDF5Data and MemoryData make only those rows (``produces_process_slice``):
they step over the other processes' items (still decoding and transforming them when
the transformer draws random crops or mirrors, to keep its random stream); WindowData
makes the whole batch and ``netspec.prefetch`` keeps the slice.
"""
import os

import numpy as np

from ..errors import NetspecError
from . import datum as datum_io
from .db import open_reader
from .transformer import DataTransformer, layer_rng, rand_uint32


class HostDataLayer:
    """Base: top-count checks, the layer's transformer, and one-batch ``forward``."""

    type = None
    min_tops, max_tops = 1, None

    def __init__(self, lp, phase):
        self.lp, self.phase, self.name = lp, int(phase), lp.name
        self.who = f'layer "{lp.name}" ({lp.type})'
        n = len(lp.top)
        if lp.bottom:
            raise NetspecError(f"{self.who}: takes no bottoms, got {len(lp.bottom)}")
        if n < self.min_tops or (self.max_tops is not None and n > self.max_tops):
            want = (str(self.min_tops) if self.min_tops == self.max_tops else
                    f"{self.min_tops} to {self.max_tops}" if self.max_tops else f"at least {self.min_tops}")
            raise NetspecError(f"{self.who}: takes {want} tops, got {n}")
        self.output_labels = n > 1
        self._batch = None

    def error(self, message):
        return NetspecError(f"{self.who}: {message}")

    produces_process_slice = False

    def process_rows(self):
        """``(lo, hi)``: the rows of each ``batch_size`` batch this process makes."""
        from ..distributed import data_slice, slice_rows
        index, count = data_slice(self.phase)
        return slice_rows(self.batch_size, index, count, self.who)

    def setup(self, bottom, top):
        shapes = self.top_shapes()
        for blob, shape in zip(top, shapes):
            blob.reshape(*shape)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        arrays = self.load_batch()
        for blob, array in zip(top, arrays):
            blob.reshape(*array.shape)
            blob.data[...] = array

    # subclasses
    def top_shapes(self):
        raise NotImplementedError

    def load_batch(self):
        raise NotImplementedError


class ItemDataLayer(HostDataLayer):
    """A data layer whose batches are items passed one by one through ``transform_param``
    (Data, ImageData): a subclass gives ``next_item()`` and ``advance()``."""

    def top_shapes(self):
        """Data shaped by the current item, as Caffe's DataLayerSetUp; labels (batch_size,)."""
        array, _, where = self.next_item()
        shape = (self.batch_size,) + self.transformer.infer_shape(array.shape, where)
        return [shape, (self.batch_size,)][:len(self.lp.top)]

    produces_process_slice = True

    def load_batch(self):
        """``[data, labels]`` for ``batch_size`` items, each ``(array, label, where)`` from the
        subclass's ``next_item()`` and passed through ``transform_param``, then ``advance()``;
        the batch takes its item shape from its first item (Caffe's DataLayer and
        ImageDataLayer ``load_batch``).  Multi-process: this process's rows only."""
        lo, hi = self.process_rows()
        t = self.transformer
        random = bool(t.mirror or (t.crop_size and t.phase == 0))
        labels = np.zeros(hi - lo, np.float32)
        data = item_shape = scratch = None
        for i in range(self.batch_size):
            if not lo <= i < hi:        # another process's item
                if random:              # draw its crop/mirror all the same
                    array, _, where = self.next_item()
                    shape = t.infer_shape(array.shape, where)
                    if scratch is None or scratch.shape != shape:
                        scratch = np.empty(shape, np.float32)
                    t.transform(array, where, out=scratch, expected=shape)
                self.advance()
                continue
            array, label, where = self.next_item()
            if i == lo:
                item_shape = t.infer_shape(array.shape, where)
                data = np.empty((hi - lo,) + item_shape, np.float32)
            t.transform(array, where, out=data[i - lo], expected=item_shape)
            labels[i - lo] = label
            self.advance()
        return [data, labels][:len(self.lp.top)]

    def next_item(self):
        """The current item: ``(array (C, H, W), label, where)`` (``where`` names it in errors)."""
        raise NotImplementedError

    def advance(self):
        """Move on to the next item (wrapping around, reshuffling, ...)."""
        raise NotImplementedError


def _batch_size(value, who):
    if value <= 0:
        raise NetspecError(f"{who}: batch_size must be positive, got {value}")
    return int(value)


# --------------------------------------------------------------------------- Data

class DataLayer(ItemDataLayer):
    """``Data``: Datums from LMDB or LevelDB in key order, wrapping at the end.  Caffe at
    HEAD ignores ``rand_skip`` and ``prefetch`` for this layer; so does this."""

    type = "Data"
    max_tops = 2

    def __init__(self, lp, phase):
        super().__init__(lp, phase)
        p = lp.data_param
        self.batch_size = _batch_size(p.batch_size, self.who)
        if not p.source:
            raise self.error("data_param.source is empty; name an LMDB or LevelDB directory")
        self.transformer = DataTransformer(lp.transform_param, phase, lp.name, lp.type)
        self.reader = open_reader(p.source, int(p.backend), self.who)

    def _item(self):
        where = self.reader.where()
        datum = datum_io.parse_datum(self.reader.value(), where)
        t = self.transformer
        return datum, datum_io.datum_array(datum, where, t.force_color, t.force_gray), where

    def next_item(self):
        datum, array, where = self._item()
        return array, datum.label, where

    def advance(self):
        self.reader.next()


# --------------------------------------------------------------------------- ImageData

class ImageDataLayer(ItemDataLayer):
    """``ImageData``: images named by a "path label" list (root_folder + path), read with
    OpenCV (colour BGR or grey), optionally resized; shuffled at start and each epoch."""

    type = "ImageData"
    min_tops = max_tops = 2

    def __init__(self, lp, phase):
        super().__init__(lp, phase)
        p = lp.image_data_param
        self.batch_size = _batch_size(p.batch_size, self.who)
        self.new_height, self.new_width = int(p.new_height), int(p.new_width)
        if not ((self.new_height == 0 and self.new_width == 0) or (self.new_height > 0 and self.new_width > 0)):
            raise self.error("set new_height and new_width together (both 0, or both positive)")
        self.is_color, self.root = bool(p.is_color), p.root_folder
        self.source = p.source
        self.transformer = DataTransformer(lp.transform_param, phase, lp.name, lp.type)
        self.lines = datum_io.read_image_list(self.source, self.who)
        self.shuffle = bool(p.shuffle)
        self.shuffle_rng = layer_rng(lp.name, "shuffle")
        if self.shuffle:
            self._shuffle()
        self.line_id = 0
        if p.rand_skip:
            skip = rand_uint32(layer_rng(lp.name, "skip")) % int(p.rand_skip)
            if len(self.lines) <= skip:
                raise self.error(f"rand_skip {p.rand_skip} skipped {skip} of only {len(self.lines)} images in "
                                 f"{self.source}; lower rand_skip")
            self.line_id = skip

    def _shuffle(self):
        order = self.shuffle_rng.permutation(len(self.lines))
        self.lines = [self.lines[i] for i in order]

    def _image(self):
        name, label, number = self.lines[self.line_id]
        path = self.root + name
        image = datum_io.read_image(path, self.new_height, self.new_width, self.is_color)
        if image is None:
            raise NetspecError(f'{self.who}: {self.source}:{number}: cannot read image "{path}" '
                               "(missing or not an image); fix the list or root_folder")
        return image.transpose(2, 0, 1), label, f"{path} ({self.source}:{number})"

    def next_item(self):
        return self._image()

    def advance(self):
        self.line_id += 1
        if self.line_id >= len(self.lines):
            self.line_id = 0
            if self.shuffle:
                self._shuffle()


# --------------------------------------------------------------------------- HDF5Data

class HDF5DataLayer(HostDataLayer):
    """``HDF5Data``: the source lists .h5 files; each top is the dataset of that name.
    Rows are served in order (or shuffled: file order at start and each pass over the
    files, row order on each file load and each pass over a file), crossing files."""

    type = "HDF5Data"

    def __init__(self, lp, phase):
        super().__init__(lp, phase)
        if lp.HasField("transform_param"):
            raise self.error("HDF5Data does not transform data; remove transform_param and "
                             "store the data already transformed")
        p = lp.hdf5_data_param
        self.batch_size = _batch_size(p.batch_size, self.who)
        self.source, self.shuffle = p.source, bool(p.shuffle)
        try:
            with open(self.source, "r", encoding="utf-8") as f:
                self.files = f.read().split()
        except OSError as e:
            raise self.error(f"cannot read the list of HDF5 files {self.source}: {e.strerror or e}") from None
        if not self.files:
            raise self.error(f"{self.source} lists no HDF5 files; give one .h5 path per line")
        self.rng = layer_rng(lp.name, "shuffle")
        self.file_permutation = np.arange(len(self.files))
        if self.shuffle:
            self.rng.shuffle(self.file_permutation)
        self.current_file = 0
        self._load(self.files[self.file_permutation[0]])
        self.current_row = 0
        self.row_shapes = [a.shape[1:] for a in self.arrays]

    def _resolve(self, name):
        if os.path.isabs(name) or os.path.exists(name):
            return name
        beside = os.path.join(os.path.dirname(self.source), name)
        return beside if os.path.exists(beside) else name

    def _load(self, name):
        import h5py
        path = self._resolve(name)
        try:
            f = h5py.File(path, "r")
        except (OSError, ValueError) as e:
            raise self.error(f"cannot open HDF5 file {path} (listed in {self.source}): "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        arrays = []
        with f:
            for top in self.lp.top:
                dataset = f.get(top)
                if not isinstance(dataset, h5py.Dataset):
                    raise self.error(f'HDF5 file {path} has no dataset "{top}" (datasets are named by the '
                                     f"layer's tops: {', '.join(self.lp.top)})")
                if dataset.dtype.kind not in "fiub" or dataset.ndim < 1:
                    raise self.error(f'HDF5 file {path}: dataset "{top}" must be numeric with at least one '
                                     f"axis, got {dataset.dtype} {dataset.shape}")
                arrays.append(np.asarray(dataset[...], np.float32))
        num = arrays[0].shape[0]
        for index, (top, a) in enumerate(zip(self.lp.top, arrays)):
            if a.shape[0] != num:
                raise self.error(f'HDF5 file {path}: dataset "{top}" has {a.shape[0]} rows but '
                                 f'"{self.lp.top[0]}" has {num}')
            if hasattr(self, "row_shapes"):
                expected = self.row_shapes[index]
                if a.shape[1:] != expected:
                    raise self.error(f'HDF5 file {path}: dataset "{top}" rows are {a.shape[1:]} but the first '
                                     f"file's are {expected}; all files must agree")
        if num == 0:
            raise self.error(f"HDF5 file {path} has no rows")
        self.arrays, self.path = arrays, path
        self.data_permutation = np.arange(num)
        if self.shuffle:
            self.rng.shuffle(self.data_permutation)

    def _next(self):
        self.current_row += 1
        if self.current_row == self.arrays[0].shape[0]:
            if len(self.files) > 1:
                self.current_file += 1
                if self.current_file == len(self.files):
                    self.current_file = 0
                    if self.shuffle:
                        self.rng.shuffle(self.file_permutation)
                self._load(self.files[self.file_permutation[self.current_file]])
            self.current_row = 0
            if self.shuffle:
                self.rng.shuffle(self.data_permutation)

    def top_shapes(self):
        return [(self.batch_size,) + a.shape[1:] for a in self.arrays]

    produces_process_slice = True

    def load_batch(self):
        lo, hi = self.process_rows()
        out = [np.empty((hi - lo,) + s, np.float32) for s in self.row_shapes]
        for i in range(self.batch_size):
            if lo <= i < hi:
                row = self.data_permutation[self.current_row]
                for o, a in zip(out, self.arrays):
                    o[i - lo] = a[row]
            self._next()
        return out


# --------------------------------------------------------------------------- MemoryData

class MemoryDataLayer(HostDataLayer):
    """``MemoryData``: batches cut from arrays given by ``set_input_arrays`` (pycaffe's
    ``net.set_input_arrays``: used as given, not transformed, as Caffe's ``Reset``), or
    by ``add_datum_vector``/``add_mat_vector`` (transformed by ``transform_param``)."""

    produces_process_slice = True

    type = "MemoryData"
    min_tops = max_tops = 2

    def __init__(self, lp, phase):
        super().__init__(lp, phase)
        p = lp.memory_data_param
        self.batch_size, self.channels, self.height, self.width = (
            int(p.batch_size), int(p.channels), int(p.height), int(p.width))
        if min(self.batch_size, self.channels, self.height, self.width) <= 0:
            raise self.error("batch_size, channels, height and width must be specified and positive in "
                             "memory_data_param")
        self.transformer = DataTransformer(lp.transform_param, phase, lp.name, lp.type)
        self.data = self.labels = None
        self.pos = 0

    def top_shapes(self):
        return [(self.batch_size, self.channels, self.height, self.width), (self.batch_size,)]

    def reshape(self, bottom, top):
        # Caffe's Forward reshapes the label top to (N, 1, 1, 1); do it up front so the
        # shapes stay the same from the first pass on.
        top[0].reshape(self.batch_size, self.channels, self.height, self.width)
        top[1].reshape(self.batch_size, 1, 1, 1)

    def set_input_arrays(self, data, labels):
        """pycaffe's ``net.set_input_arrays(data, labels)``: float32 C-contiguous
        (N, C, H, W) data, labels (N,) or (N, 1, 1, 1), N a multiple of batch_size."""
        labels = np.asarray(labels) if not isinstance(labels, np.ndarray) else labels
        if isinstance(data, np.ndarray) is False:
            raise self.error("set_input_arrays: data must be a numpy array")
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, None, None, None])
        self._check_array(data, "data array", (self.channels, self.height, self.width))
        self._check_array(labels, "labels array", (1, 1, 1))
        if data.shape[0] != labels.shape[0]:
            raise self.error(f"set_input_arrays: data and labels must have the same first dimension "
                             f"({data.shape[0]} != {labels.shape[0]})")
        self._reset(data, labels)

    def _check_array(self, array, what, trailing):
        if array.dtype != np.float32:
            raise self.error(f"set_input_arrays: {what} must be float32, got {array.dtype}")
        if not array.flags.c_contiguous:
            raise self.error(f"set_input_arrays: {what} must be C-contiguous (use np.ascontiguousarray)")
        if array.ndim != 4:
            raise self.error(f"set_input_arrays: {what} must have 4 axes, got shape {array.shape}")
        if tuple(array.shape[1:]) != tuple(trailing):
            raise self.error(f"set_input_arrays: {what} has shape {array.shape}; its last three axes must "
                             f"be {tuple(trailing)} (memory_data_param)")

    def _reset(self, data, labels):
        n = data.shape[0]
        if n == 0 or n % self.batch_size:
            raise self.error(f"set_input_arrays: first dimensions of input arrays must be a multiple of "
                             f"batch size {self.batch_size}, got {n}")
        self.data, self.labels, self.n, self.pos = data, labels, n, 0

    def add_datum_vector(self, datums):
        """Caffe's ``AddDatumVector``: Datums transformed, their labels kept."""
        items, labels = [], []
        for i, d in enumerate(datums):
            where = f"datum {i}"
            items.append(datum_io.datum_array(d, where, self.transformer.force_color,
                                              self.transformer.force_gray))
            labels.append(d.label)
        self._add(items, labels)

    def add_mat_vector(self, images, labels):
        """Caffe's ``AddMatVector``: (H, W, C) uint8 BGR images transformed, with labels."""
        items = [np.asarray(im)[:, :, None].transpose(2, 0, 1) if np.ndim(im) == 2
                 else np.asarray(im).transpose(2, 0, 1) for im in images]
        if len(items) != len(labels):
            raise self.error(f"add_mat_vector: {len(items)} images but {len(labels)} labels")
        self._add(items, labels)

    def _add(self, items, labels):
        if not items:
            raise self.error("there is no data to add")
        shape = (self.channels, self.height, self.width)
        data = np.empty((len(items),) + shape, np.float32)
        for i, item in enumerate(items):
            self.transformer.transform(item, f"item {i}", out=data[i], expected=shape)
        self._reset(data, np.asarray(labels, np.float32).reshape(-1, 1, 1, 1))

    def load_batch(self):
        if self.data is None:
            raise self.error("has no data; call net.set_input_arrays(data, labels) first")
        lo, hi = self.process_rows()
        s = slice(self.pos + lo, self.pos + hi)
        batch = [np.array(self.data[s], np.float32), np.array(self.labels[s], np.float32)]
        self.pos = (self.pos + self.batch_size) % self.n
        return batch


# --------------------------------------------------------------------------- WindowData

def _c_round(x):
    """C's ``round``: halves away from zero."""
    return int(np.sign(x) * np.floor(abs(float(x)) + 0.5))


class WindowDataLayer(HostDataLayer):
    """``WindowData`` (R-CNN fine-tuning): windows of a window file, fg/bg by overlap
    threshold, each batch ``batch_size - int(batch_size * fg_fraction)`` background then
    the rest foreground windows, sampled uniformly with replacement; each window
    (with ``context_pad``, ``crop_mode`` warp or square) warped to crop_size, mirrored
    at random, minus the mean, times ``window_data_param.scale``."""

    type = "WindowData"
    min_tops = max_tops = 2
    IMAGE_INDEX, LABEL, OVERLAP, X1, Y1, X2, Y2 = range(7)

    def __init__(self, lp, phase):
        super().__init__(lp, phase)
        p, tp = lp.window_data_param, lp.transform_param
        self.p = p
        self.batch_size = _batch_size(p.batch_size, self.who)
        self.crop_size = int(tp.crop_size)
        if self.crop_size <= 0:
            raise self.error("transform_param.crop_size must be positive (the warped window size)")
        self.mirror = bool(tp.mirror)
        self.context_pad = int(p.context_pad)
        self.use_square = p.crop_mode == "square"
        self.scale = np.float32(p.scale)
        self.rng = layer_rng(lp.name, "prefetch")
        self.images, self.fg, self.bg = [], [], []
        self._read_window_file(p.source, p.root_folder, float(p.fg_threshold), float(p.bg_threshold))
        self.channels = self.images[-1][1][0]
        self.cache = {}
        self.cache_images = bool(p.cache_images)
        if self.cache_images:
            for path, _ in self.images:
                datum = datum_io.read_file_to_datum(path, 0)
                if datum is None:
                    raise self.error(f"cannot read image {path} (window file {p.source})")
                self.cache[path] = datum.data
        # The mean, checked as Caffe's DataLayerSetUp does (the transformer reads it).
        self.transformer = DataTransformer(tp, phase, lp.name, lp.type)
        self.mean = None
        if self.transformer.mean is not None:
            shape = self.transformer.mean_shape
            c, h, w = (shape[-3:] if len(shape) >= 3 else (1, 1, 1))
            self.mean = self.transformer.mean.reshape(c, h, w)
            self.mean_off = (w - self.crop_size) // 2
        mv = self.transformer.mean_values
        if mv.size and mv.size not in (1, self.channels):
            raise self.error(f"{mv.size} mean_values for {self.channels} channels; give one, or one per channel")
        self.mean_values = np.broadcast_to(mv, (self.channels,)) if mv.size == 1 else mv
        if not self.fg or not self.bg:
            raise self.error(f"window file {p.source} gives {len(self.fg)} foreground and {len(self.bg)} "
                             "background windows; both are needed (check fg_threshold/bg_threshold)")

    def _read_window_file(self, source, root, fg_threshold, bg_threshold):
        try:
            with open(source, "r", encoding="utf-8") as f:
                tokens = f.read().split()
        except OSError as e:
            raise self.error(f"cannot read window file {source}: {e.strerror or e}") from None
        if len(tokens) < 2:
            raise self.error(f"window file {source} is empty")
        pos = 0

        def take(kind, what):
            nonlocal pos
            if pos >= len(tokens):
                raise self.error(f"window file {source}: ends where {what} was expected")
            token = tokens[pos]
            pos += 1
            try:
                return kind(token)
            except ValueError:
                raise self.error(f'window file {source}: "{token}" is not a valid {what}') from None

        while pos < len(tokens):
            hashtag = take(str, '"#"')
            if hashtag != "#":
                raise self.error(f'window file {source}: expected "# image_index", found "{hashtag}"')
            image_index = take(int, "image index")
            path = root + take(str, "image path")
            size = [take(int, "channels"), take(int, "height"), take(int, "width")]
            self.images.append((path, size))
            for _ in range(take(int, "number of windows")):
                label = take(int, "class index")
                overlap = np.float32(take(float, "overlap"))
                x1, y1, x2, y2 = (take(int, "coordinate") for _ in range(4))
                window = [image_index, label, overlap, x1, y1, x2, y2]
                if overlap >= np.float32(fg_threshold):
                    if label <= 0:
                        raise self.error(f"window file {source}: foreground window of {path} has class "
                                         f"{label}; foreground classes must be > 0")
                    self.fg.append(window)
                elif overlap < np.float32(bg_threshold):
                    window[self.LABEL], window[self.OVERLAP] = 0, 0
                    self.bg.append(window)

    def top_shapes(self):
        return [(self.batch_size, self.channels, self.crop_size, self.crop_size), (self.batch_size,)]

    def _image(self, index):
        if not 0 <= index < len(self.images):
            raise self.error(f"window refers to image index {index}, but the window file lists "
                             f"{len(self.images)} images (indices must count from 0)")
        path = self.images[index][0]
        if self.cache_images:
            image = datum_io.decode_image(self.cache[path], datum_io.COLOR)
        else:
            image = datum_io.read_image(path, is_color=True)
        if image is None:
            raise self.error(f"cannot read image {path} (window file {self.p.source})")
        return image

    def load_batch(self):
        cv = datum_io.cv2()
        f32 = np.float32
        crop = self.crop_size
        data = np.zeros((self.batch_size, self.channels, crop, crop), np.float32)
        labels = np.zeros(self.batch_size, np.float32)
        num_fg = int(f32(self.batch_size) * f32(self.p.fg_fraction))
        item = 0
        for is_fg, count in ((0, self.batch_size - num_fg), (1, num_fg)):
            windows = self.fg if is_fg else self.bg
            for _ in range(count):
                window = windows[rand_uint32(self.rng) % len(windows)]
                do_mirror = self.mirror and rand_uint32(self.rng) % 2 == 1
                image = self._image(int(window[self.IMAGE_INDEX]))
                channels = image.shape[2]
                x1, y1, x2, y2 = (int(window[k]) for k in (self.X1, self.Y1, self.X2, self.Y2))
                pad_w = pad_h = 0
                out_w = out_h = crop
                if self.context_pad > 0 or self.use_square:
                    context_scale = f32(crop) / f32(crop - 2 * self.context_pad)
                    half_height = f32(y2 - y1 + 1) / f32(2.0)
                    half_width = f32(x2 - x1 + 1) / f32(2.0)
                    center_x = f32(x1) + half_width
                    center_y = f32(y1) + half_height
                    if self.use_square:
                        half_width = half_height = max(half_height, half_width)
                    x1 = _c_round(f32(center_x - half_width * context_scale))
                    x2 = _c_round(f32(center_x + half_width * context_scale))
                    y1 = _c_round(f32(center_y - half_height * context_scale))
                    y2 = _c_round(f32(center_y + half_height * context_scale))
                    unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
                    pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
                    pad_x2 = max(0, x2 - image.shape[1] + 1)
                    pad_y2 = max(0, y2 - image.shape[0] + 1)
                    x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
                    if x1 < 0 or y1 < 0 or x2 >= image.shape[1] or y2 >= image.shape[0] or x2 < x1 or y2 < y1:
                        raise self.error(f"window ({window[3]}, {window[4]}, {window[5]}, {window[6]}) lies "
                                         f"outside its {image.shape[1]}x{image.shape[0]} image")
                    scale_x = f32(crop) / f32(unclipped_w)
                    scale_y = f32(crop) / f32(unclipped_h)
                    out_w = _c_round(f32(f32(x2 - x1 + 1) * scale_x))
                    out_h = _c_round(f32(f32(y2 - y1 + 1) * scale_y))
                    pad_x1 = _c_round(f32(f32(pad_x1) * scale_x))
                    pad_x2 = _c_round(f32(f32(pad_x2) * scale_x))
                    pad_y1 = _c_round(f32(f32(pad_y1) * scale_y))
                    pad_h = pad_y1
                    pad_w = pad_x2 if do_mirror else pad_x1
                    if pad_h + out_h > crop:
                        out_h = crop - pad_h
                    if pad_w + out_w > crop:
                        out_w = crop - pad_w
                if not (0 <= x1 <= x2 < image.shape[1] and 0 <= y1 <= y2 < image.shape[0]):
                    raise self.error(f"window ({x1}, {y1}, {x2}, {y2}) lies outside its "
                                     f"{image.shape[1]}x{image.shape[0]} image")
                roi = image[y1:y2 + 1, x1:x2 + 1]
                warped = cv.resize(roi, (out_w, out_h), interpolation=cv.INTER_LINEAR)
                if warped.ndim == 2:
                    warped = warped[:, :, None]
                if do_mirror:
                    warped = warped[:, ::-1]
                pixels = warped.transpose(2, 0, 1).astype(np.float32)
                if self.mean is not None:
                    o = self.mean_off
                    pixels = pixels - self.mean[:channels, o + pad_h:o + pad_h + out_h, o + pad_w:o + pad_w + out_w]
                elif self.mean_values.size:
                    pixels = pixels - self.mean_values[:channels, None, None]
                data[item, :channels, pad_h:pad_h + out_h, pad_w:pad_w + out_w] = pixels * self.scale
                labels[item] = window[self.LABEL]
                item += 1
        return [data, labels]


HOST_DATA_LAYERS = {
    "Data": DataLayer,
    "ImageData": ImageDataLayer,
    "HDF5Data": HDF5DataLayer,
    "MemoryData": MemoryDataLayer,
    "WindowData": WindowDataLayer,
}

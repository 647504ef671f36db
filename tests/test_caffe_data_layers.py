"""Caffe's data layers (netspec.caffe_data) against NumPy transcriptions of Caffe's loops
(data_transformer.cpp, *_data_layer.cpp) on hand-built LMDBs, image lists and .h5 files."""
import h5py
import numpy as np
import pytest
from google.protobuf import text_format

from netspec import Blob
from netspec.caffe_data import host_data_layer
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2

from caffe_data_helpers import raw_datum, read_bgr, write_images, write_list, write_lmdb

TRAIN, TEST = 0, 1


def layer(text, phase=TEST):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    obj = host_data_layer(lp, phase)
    tops = [Blob() for _ in lp.top]
    obj.setup([], tops)
    obj.reshape([], tops)
    return obj, tops


def forward(obj, tops):
    obj.reshape([], tops)
    obj.forward([], tops)
    return [t.data.copy() for t in tops]


def caffe_transform(data, c, h, w, crop, h_off, w_off, mirror, scale, mean=None, mean_values=None):
    """data_transformer.cpp Transform(const Datum&, Dtype*), loop for loop."""
    height, width = (crop, crop) if crop else (h, w)
    out = np.zeros(c * height * width, np.float32)
    for ci in range(c):
        for hi in range(height):
            for wi in range(width):
                data_index = (ci * h + h_off + hi) * w + w_off + wi
                top_index = (ci * height + hi) * width + ((width - 1 - wi) if mirror else wi)
                e = np.float32(data[data_index])
                if mean is not None:
                    out[top_index] = (e - np.float32(mean[data_index])) * np.float32(scale)
                elif mean_values is not None:
                    out[top_index] = (e - np.float32(mean_values[ci])) * np.float32(scale)
                else:
                    out[top_index] = e * np.float32(scale)
    return out.reshape(c, height, width)


@pytest.fixture
def db(tmp_path):
    rng = np.random.RandomState(1)
    arrays = [rng.randint(0, 256, (3, 6, 7)).astype(np.uint8) for _ in range(5)]
    path = write_lmdb(tmp_path / "lmdb", [(f"{i:08d}_x", raw_datum(a, 10 + i).SerializeToString())
                                          for i, a in enumerate(arrays)])
    return path, arrays


def test_data_test_phase_centre_crop_mean_value_scale_and_wraparound(db):
    path, arrays = db
    obj, tops = layer(f'''name: "d" type: "Data" top: "data" top: "label"
        transform_param {{ crop_size: 4 mean_value: 10 mean_value: 20 mean_value: 30 scale: 0.5 }}
        data_param {{ source: "{path}" batch_size: 3 backend: LMDB }}''')
    assert tops[0].shape == (3, 3, 4, 4) and tops[1].shape == (3,)
    order = [0, 1, 2, 3, 4, 0, 1, 2, 3]
    seen = []
    for _ in range(3):
        data, label = forward(obj, tops)
        seen += label.tolist()
        for i in range(3):
            a = arrays[int(label[i]) - 10]
            want = caffe_transform(a.ravel(), 3, 6, 7, 4, 1, 1, False, 0.5, mean_values=[10, 20, 30])
            np.testing.assert_array_equal(data[i], want)
    assert seen == [10 + i for i in order]


def test_data_mean_file_float_data_and_mirror(tmp_path):
    rng = np.random.RandomState(2)
    floats = [rng.randn(2, 5, 5).astype(np.float32) for _ in range(4)]
    path = write_lmdb(tmp_path / "f", [(f"{i}", raw_datum(a, i).SerializeToString()) for i, a in enumerate(floats)])
    mean = rng.rand(1, 2, 5, 5).astype(np.float32)
    blob = caffe_pb2.BlobProto(num=1, channels=2, height=5, width=5)
    blob.data.extend(mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    obj, tops = layer(f'''name: "d" type: "Data" top: "data" top: "label"
        transform_param {{ crop_size: 3 mirror: true mean_file: "{tmp_path}/mean.binaryproto" scale: 2 }}
        data_param {{ source: "{path}" batch_size: 4 backend: LMDB }}''', phase=TRAIN)
    data, label = forward(obj, tops)
    mirrors = set()
    for i in range(4):
        matches = [(m, h, w) for m in (False, True) for h in range(3) for w in range(3)
                   if np.array_equal(data[i], caffe_transform(floats[i].ravel(), 2, 5, 5, 3, h, w, m, 2,
                                                              mean=mean.ravel()))]
        assert matches, i
        mirrors.add(matches[0][0])
    # reproducible: a second layer object gives the same draws
    obj2, tops2 = layer(f'''name: "d" type: "Data" top: "data" top: "label"
        transform_param {{ crop_size: 3 mirror: true mean_file: "{tmp_path}/mean.binaryproto" scale: 2 }}
        data_param {{ source: "{path}" batch_size: 4 backend: LMDB }}''', phase=TRAIN)
    np.testing.assert_array_equal(forward(obj2, tops2)[0], data)


def test_train_crop_offsets_cover_the_range(db):
    path, arrays = db
    obj, tops = layer(f'''name: "c" type: "Data" top: "data"
        transform_param {{ crop_size: 5 }} data_param {{ source: "{path}" batch_size: 5 backend: LMDB }}''', phase=TRAIN)
    offsets = set()
    for _ in range(12):
        data, = forward(obj, tops)
        for i in range(5):
            a = arrays[i].astype(np.float32)
            offsets |= {(h, w) for h in range(2) for w in range(3) if np.array_equal(data[i], a[:, h:h + 5, w:w + 5])}
    assert offsets == {(h, w) for h in range(2) for w in range(3)}


def test_encoded_datums_decode_like_opencv(tmp_path):
    import cv2
    entries = write_images(str(tmp_path / "img"), 3, size=(8, 8), color=True, seed=3)
    recs = []
    for i, (name, label) in enumerate(entries):
        d = caffe_pb2.Datum(encoded=True, label=label, data=(tmp_path / "img" / name).read_bytes())
        recs.append((f"{i:08d}", d.SerializeToString()))
    path = write_lmdb(tmp_path / "enc", recs)
    obj, tops = layer(f'''name: "e" type: "Data" top: "data" top: "label"
        data_param {{ source: "{path}" batch_size: 3 backend: LMDB }}''')
    data, label = forward(obj, tops)
    for i, (name, _) in enumerate(entries):
        np.testing.assert_array_equal(data[i], read_bgr(str(tmp_path / "img" / name)).transpose(2, 0, 1))
    obj, tops = layer(f'''name: "g" type: "Data" top: "data" transform_param {{ force_gray: true }}
        data_param {{ source: "{path}" batch_size: 1 backend: LMDB }}''')
    gray = cv2.imread(str(tmp_path / "img" / entries[0][0]), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(forward(obj, tops)[0][0, 0], gray)


def test_data_errors_are_one_line_and_name_the_layer(tmp_path, db):
    path, _ = db
    with pytest.raises(NetspecError, match=r'layer "d" \(Data\): database .*nope does not exist'):
        layer(f'name: "d" type: "Data" top: "data" data_param {{ source: "{tmp_path}/nope" batch_size: 1 backend: LMDB }}')
    with pytest.raises(NetspecError, match=r'layer "d" \(Data\): crop_size 9 is larger'):
        layer(f'''name: "d" type: "Data" top: "data" transform_param {{ crop_size: 9 }}
                  data_param {{ source: "{path}" batch_size: 1 backend: LMDB }}''')
    with pytest.raises(NetspecError, match="both mean_file and mean_value"):
        layer(f'''name: "d" type: "Data" top: "data" transform_param {{ mean_file: "m" mean_value: 1 }}
                  data_param {{ source: "{path}" batch_size: 1 backend: LMDB }}''')
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2)
    blob.data.extend([0.0] * 12)
    (tmp_path / "m.binaryproto").write_bytes(blob.SerializeToString())
    obj, tops = layer(f'''name: "d" type: "Data" top: "data" transform_param {{ mean_file: "{tmp_path}/m.binaryproto" }}
                  data_param {{ source: "{path}" batch_size: 1 backend: LMDB }}''')
    with pytest.raises(NetspecError, match=r'layer "d" \(Data\): mean_file .* has shape \(1, 3, 2, 2\)'):
        forward(obj, tops)
    with pytest.raises(NetspecError, match=r"is an LMDB database .* set data_param \{ backend: LMDB \}"):
        layer(f'name: "d" type: "Data" top: "data" data_param {{ source: "{path}" batch_size: 1 }}')
    bad = write_lmdb(tmp_path / "bad", [("00000007_k", b"\x08\x03\x10\x02\x18\x02\x22\x01x")])
    obj, tops = None, None
    with pytest.raises(NetspecError, match=r'bad, key "00000007_k": Datum holds 1 bytes'):
        layer(f'name: "d" type: "Data" top: "data" data_param {{ source: "{bad}" batch_size: 1 backend: LMDB }}')


def test_leveldb_backend(tmp_path, db):
    plyvel = pytest.importorskip("plyvel")
    _, arrays = db
    ldb = plyvel.DB(str(tmp_path / "ldb"), create_if_missing=True)
    for i in (2, 0, 1):
        ldb.put(f"{i:08d}".encode(), raw_datum(arrays[i], i).SerializeToString())
    ldb.close()
    obj, tops = layer(f'''name: "l" type: "Data" top: "data" top: "label"
        data_param {{ source: "{tmp_path}/ldb" batch_size: 4 backend: LEVELDB }}''')
    data, label = forward(obj, tops)
    assert label.tolist() == [0, 1, 2, 0]
    np.testing.assert_array_equal(data[2], arrays[2])


def test_image_data_order_resize_shuffle_and_missing_image(tmp_path):
    import cv2
    entries = write_images(str(tmp_path / "img"), 5, size=(9, 11), color=True, seed=4)
    write_list(str(tmp_path / "list.txt"), entries)
    root = str(tmp_path / "img") + "/"
    obj, tops = layer(f'''name: "i" type: "ImageData" top: "data" top: "label"
        image_data_param {{ source: "{tmp_path}/list.txt" root_folder: "{root}" batch_size: 3
                            new_height: 6 new_width: 8 }}''')
    assert tops[0].shape == (3, 3, 6, 8)
    labels = []
    for _ in range(2):
        data, label = forward(obj, tops)
        labels += label.tolist()
    assert labels == [0, 1, 2, 3, 4, 0]
    want = cv2.resize(cv2.imread(root + entries[4][0]), (8, 6)).transpose(2, 0, 1)
    np.testing.assert_array_equal(data[1], want)
    # shuffled: each epoch a permutation of all lines; gray
    obj, tops = layer(f'''name: "s" type: "ImageData" top: "data" top: "label"
        image_data_param {{ source: "{tmp_path}/list.txt" root_folder: "{root}" batch_size: 5 shuffle: true
                            is_color: false }}''')
    epochs = [forward(obj, tops)[1].tolist() for _ in range(3)]
    assert all(sorted(e) == [0, 1, 2, 3, 4] for e in epochs) and len({tuple(e) for e in epochs}) > 1
    assert tops[0].shape == (5, 1, 9, 11)
    with open(tmp_path / "list.txt", "a") as f:
        f.write("gone.png 1\n")
    obj, tops = layer(f'''name: "m" type: "ImageData" top: "data" top: "label"
        image_data_param {{ source: "{tmp_path}/list.txt" root_folder: "{root}" batch_size: 6 }}''')
    with pytest.raises(NetspecError, match=r'list.txt:6: cannot read image ".*gone.png"'):
        forward(obj, tops)


def test_hdf5_data_crosses_files_in_order(tmp_path):
    rng = np.random.RandomState(3)
    parts = []
    for k, n in enumerate((3, 2)):
        x, y = rng.randn(n, 2, 3).astype(np.float32), np.arange(n, dtype=np.int32) + 10 * k
        with h5py.File(tmp_path / f"p{k}.h5", "w") as f:
            f["data"], f["label"] = x, y
        parts.append((x, y))
    (tmp_path / "list.txt").write_text(f"{tmp_path}/p0.h5\n{tmp_path}/p1.h5\n")
    obj, tops = layer(f'''name: "h" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param {{ source: "{tmp_path}/list.txt" batch_size: 4 }}''')
    assert [t.shape for t in tops] == [(4, 2, 3), (4,)]
    xs = np.concatenate([p[0] for p in parts] * 2)
    ys = np.concatenate([p[1] for p in parts] * 2).astype(np.float32)
    d1, l1 = forward(obj, tops)
    d2, l2 = forward(obj, tops)
    np.testing.assert_array_equal(np.concatenate([d1, d2]), xs[:8])
    np.testing.assert_array_equal(np.concatenate([l1, l2]), ys[:8])
    obj, tops = layer(f'''name: "h" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param {{ source: "{tmp_path}/list.txt" batch_size: 5 shuffle: true }}''')
    assert sorted(forward(obj, tops)[1].tolist()) == [0, 1, 2, 10, 11]
    with pytest.raises(NetspecError, match=r'p0.h5 has no dataset "weight"'):
        layer(f'''name: "h" type: "HDF5Data" top: "data" top: "weight"
            hdf5_data_param {{ source: "{tmp_path}/list.txt" batch_size: 1 }}''')


def test_memory_data_set_input_arrays(tmp_path):
    obj, tops = layer('''name: "m" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 }''')
    with pytest.raises(NetspecError, match="set_input_arrays"):
        forward(obj, tops)
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    obj.set_input_arrays(data, np.arange(4, dtype=np.float32))
    batches = [forward(obj, tops) for _ in range(3)]
    np.testing.assert_array_equal(batches[0][0], data[:2])
    np.testing.assert_array_equal(batches[1][0], data[2:])
    np.testing.assert_array_equal(batches[2][1].ravel(), [0, 1])
    assert batches[0][1].shape == (2, 1, 1, 1)
    for bad, match in ((data.astype(np.float64), "float32"), (data[:3], "multiple of batch size"),
                       (np.asfortranarray(data.reshape(4, 2, 3)), "C-contiguous|4 axes"),
                       (data.reshape(4, 1, 3, 2), "last three axes")):
        with pytest.raises(NetspecError, match=match):
            obj.set_input_arrays(bad, np.zeros(len(bad), np.float32))


@pytest.mark.parametrize("prefetch", [False, True])
def test_net_set_input_arrays_feeds_memory_data_in_order(tmp_path, prefetch):
    """pycaffe's net.set_input_arrays: batches walk through the arrays and wrap around;
    new arrays replace whatever the prefetch thread had read ahead."""
    import netspec
    (tmp_path / "net.prototxt").write_text('''name: "mem"
        layer { name: "m" type: "MemoryData" top: "data" top: "label"
                memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }
        layer { name: "sum" type: "Reduction" bottom: "data" top: "sum" reduction_param { axis: 1 } }''')
    net = netspec.Net(str(tmp_path / "net.prototxt"), netspec.TEST, prefetch=prefetch)
    data = np.arange(6 * 6, dtype=np.float32).reshape(6, 1, 2, 3)
    net.set_input_arrays(data, np.arange(6, dtype=np.float32))
    for start in (0, 2, 4, 0):
        out = net.forward()
        np.testing.assert_array_equal(net.blobs["data"].data, data[start:start + 2])
        np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [start, start + 1])
        np.testing.assert_allclose(out["sum"], data[start:start + 2].reshape(2, -1).sum(1))
    net.set_input_arrays(-data[:2], np.array([7, 8], np.float32))
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, -data[:2])
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [7, 8])
    net.close()


def test_window_data_samples_fg_bg_and_warps(tmp_path):
    import cv2
    img = (np.arange(20 * 30 * 3) % 251).astype(np.uint8).reshape(20, 30, 3)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    (tmp_path / "windows.txt").write_text(
        f"# 0\n{tmp_path}/a.png\n3\n20\n30\n3\n1 0.9 2 3 12 15\n2 0.8 0 0 29 19\n0 0.1 5 5 9 9\n")
    obj, tops = layer('''name: "w" type: "WindowData" top: "data" top: "label"
        transform_param { crop_size: 8 mean_value: 100 }
        window_data_param { source: "%s/windows.txt" batch_size: 4 fg_fraction: 0.5 scale: 0.5 }''' % tmp_path,
                      phase=TRAIN)
    data, label = forward(obj, tops)
    assert data.shape == (4, 3, 8, 8)
    assert label[:2].tolist() == [0, 0] and set(label[2:].tolist()) <= {1, 2}
    bg = cv2.resize(img[5:10, 5:10], (8, 8)).transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(data[0], (bg - 100) * np.float32(0.5))
    for i in (2, 3):
        x1, y1, x2, y2 = (2, 3, 12, 15) if label[i] == 1 else (0, 0, 29, 19)
        warp = cv2.resize(img[y1:y2 + 1, x1:x2 + 1], (8, 8)).transpose(2, 0, 1).astype(np.float32)
        np.testing.assert_array_equal(data[i], (warp - 100) * np.float32(0.5))

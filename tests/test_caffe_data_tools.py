"""``netspec convert-imageset`` and ``netspec compute-image-mean`` against hand-built
Datums (pixels read with PIL, keys formatted as convert_imageset.cpp does) and a NumPy
mean; databases read back directly with ``lmdb``/``plyvel``."""
import os

import lmdb
import numpy as np
import pytest

from netspec import cli
from netspec.caffe_data import datum as datum_io
from netspec.proto import caffe_pb2

from caffe_data_helpers import raw_datum, read_bgr, write_images, write_list


def lmdb_items(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    env.close()
    return items


@pytest.fixture
def images(tmp_path):
    entries = write_images(str(tmp_path / "img"), 6, size=(7, 9), color=True, seed=5)
    entries[2] = (entries[2][0], 12)
    return tmp_path, entries


def test_convert_imageset_lmdb_is_caffes_bytes(images):
    tmp_path, entries = images
    write_list(str(tmp_path / "list.txt"), entries)
    assert cli.main(["convert-imageset", str(tmp_path / "img") + "/", str(tmp_path / "list.txt"),
                     str(tmp_path / "db")]) == 0
    items = lmdb_items(tmp_path / "db")
    expected = []
    for i, (name, label) in enumerate(entries):
        bgr = read_bgr(str(tmp_path / "img" / name))
        datum = raw_datum(np.ascontiguousarray(bgr.transpose(2, 0, 1)), label)
        datum.encoded = False   # CVMatToDatum sets encoded explicitly
        expected.append(((f"{i:08d}_{name}").encode(), datum.SerializeToString()))
    assert items == expected
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_convert_imageset_gray_resize_encoded_and_leveldb(images):
    plyvel = pytest.importorskip("plyvel")
    import cv2
    tmp_path, entries = images
    write_list(str(tmp_path / "list.txt"), entries)
    root = str(tmp_path / "img") + "/"
    assert cli.main(["convert-imageset", "--gray", "--resize_width", "5", "--resize_height", "4",
                     "--backend", "leveldb", root, str(tmp_path / "list.txt"), str(tmp_path / "ldb")]) == 0
    db = plyvel.DB(str(tmp_path / "ldb"))
    items = list(db.iterator())
    db.close()
    assert [k for k, _ in items] == [f"{i:08d}_{n}".encode() for i, (n, _) in enumerate(entries)]
    gray = read_bgr(str(tmp_path / "img" / entries[0][0]), gray=True)[:, :, 0]
    d = caffe_pb2.Datum.FromString(items[0][1])
    assert (d.channels, d.height, d.width, d.encoded) == (1, 4, 5, False)
    # cv::resize INTER_LINEAR on OpenCV's own grey conversion
    want = cv2.resize(cv2.imread(root + entries[0][0], cv2.IMREAD_GRAYSCALE), (5, 4))
    assert np.frombuffer(d.data, np.uint8).reshape(4, 5).tolist() == want.tolist()
    assert abs(int(cv2.imread(root + entries[0][0], 0)[0, 0]) - int(gray[0, 0])) <= 1
    # --encoded keeps the PNG's own bytes (same format, colour, no resize)
    assert cli.main(["convert-imageset", "--encoded", root, str(tmp_path / "list.txt"), str(tmp_path / "enc")]) == 0
    enc = caffe_pb2.Datum.FromString(lmdb_items(tmp_path / "enc")[1][1])
    assert enc.encoded and enc.data == (tmp_path / "img" / entries[1][0]).read_bytes()
    assert enc.label == entries[1][1]


def test_convert_imageset_refuses_existing_and_skips_missing(images, capfd):
    tmp_path, entries = images
    write_list(str(tmp_path / "list.txt"), entries[:2] + [("missing.png", 3)] + entries[2:3])
    out = tmp_path / "db"
    assert cli.main(["convert-imageset", str(tmp_path / "img") + "/", str(tmp_path / "list.txt"), str(out)]) == 0
    keys = [k for k, _ in lmdb_items(out)]
    assert keys == [b"00000000_img_000.png", b"00000001_img_001.png", b"00000003_img_002.png"]
    before = sorted(os.listdir(out)), (out / "data.mdb").read_bytes()
    capfd.readouterr()
    assert cli.main(["convert-imageset", str(tmp_path / "img") + "/", str(tmp_path / "list.txt"), str(out)]) == 2
    err = capfd.readouterr().err
    assert "already exists" in err and "Traceback" not in err
    assert (sorted(os.listdir(out)), (out / "data.mdb").read_bytes()) == before


def test_compute_image_mean_matches_numpy(tmp_path, capfd):
    from caffe_data_helpers import write_lmdb
    rng = np.random.RandomState(0)
    arrays = [rng.randint(0, 256, (3, 4, 5)).astype(np.uint8) for _ in range(7)]
    write_lmdb(tmp_path / "db", [(f"{i:08d}", raw_datum(a, i).SerializeToString()) for i, a in enumerate(arrays)])
    capfd.readouterr()
    assert cli.main(["compute-image-mean", str(tmp_path / "db"), str(tmp_path / "mean.binaryproto")]) == 0
    out = capfd.readouterr().out
    blob = caffe_pb2.BlobProto.FromString((tmp_path / "mean.binaryproto").read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 4, 5)
    assert not blob.HasField("shape")
    want = (np.sum(np.stack(arrays).astype(np.float64), 0) / 7).astype(np.float32)
    np.testing.assert_array_equal(np.array(blob.data, np.float32).reshape(3, 4, 5), want)
    for c in range(3):
        assert f"mean_value channel [{c}]: {want[c].mean():.6g}" in out
    # and the transformer reads it back
    from netspec.caffe_data.transformer import read_mean_file
    values, shape = read_mean_file(str(tmp_path / "mean.binaryproto"), "t")
    assert shape == (1, 3, 4, 5) and np.array_equal(values.reshape(3, 4, 5), want)


def test_datum_errors_name_the_record(tmp_path):
    from netspec.errors import NetspecError
    d = caffe_pb2.Datum(channels=3, height=2, width=2, data=b"\0" * 5)
    with pytest.raises(NetspecError, match=r"db, key \"k\": Datum holds 5 bytes .* 3\*2\*2 = 12"):
        datum_io.datum_array(d, 'db, key "k"')
    enc = caffe_pb2.Datum(encoded=True, data=b"not an image")
    with pytest.raises(NetspecError, match="does not decode"):
        datum_io.datum_array(enc, "x")

"""Binary .caffemodel / .solverstate I/O, checked against the stock protobuf parser."""
import os
import stat

import numpy as np
import pytest

from netspec import caffemodel, wire
from netspec.blob import Blob
from netspec.caffemodel import (load_weights, match_blob_shape, read_caffemodel,
                                read_solverstate, write_caffemodel, write_solverstate)
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2


def small_net():
    """A V2 net with net-level fields, learned layers of assorted shapes and blob-less layers."""
    net = caffe_pb2.NetParameter(name="tiny", force_backward=True)
    net.input.append("data")
    net.input_shape.add(dim=[1, 3, 8, 8])
    net.state.phase = caffe_pb2.TRAIN
    conv = net.layer.add(name="conv1", type="Convolution", bottom=["data"], top=["conv1"])
    conv.param.add(lr_mult=1, decay_mult=1)
    conv.param.add(lr_mult=2, decay_mult=0)
    conv.convolution_param.num_output = 4
    conv.convolution_param.kernel_size.append(3)
    net.layer.add(name="relu1", type="ReLU", bottom=["conv1"], top=["conv1"])
    net.layer.add(name="fc", type="InnerProduct", bottom=["conv1"], top=["fc"]).inner_product_param.num_output = 5
    net.layer.add(name="bn", type="BatchNorm", bottom=["fc"], top=["fc"])
    net.layer.add(name="s", type="Scale", bottom=["fc"], top=["fc"])
    return net


def small_weights(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv1": [rng.standard_normal((4, 3, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)],
        "fc": [rng.standard_normal((5, 144)).astype(np.float32), rng.standard_normal(5).astype(np.float32)],
        "bn": [rng.random(5).astype(np.float32), rng.random(5).astype(np.float32), np.array([3.0], np.float32)],
        "s": [np.array(2.5, np.float32), np.zeros((0, 3), np.float32)],   # 0-d and empty blobs
    }


def assert_same_weights(actual, expected):
    assert list(actual) == list(expected)
    for name in expected:
        assert len(actual[name]) == len(expected[name]), name
        for a, e in zip(actual[name], expected[name]):
            assert a.dtype == np.float32 and a.shape == np.shape(e), name
            np.testing.assert_array_equal(a, e)


def stock_weights(net):
    """Blobs of a stock-parsed net as arrays, with Caffe's shape rule done by hand."""
    out = {}
    for layer in list(net.layer) + list(net.layers):
        name = layer.name or layer.layer.name
        blobs = list(layer.blobs) or list(layer.layer.blobs) if hasattr(layer, "layer") else list(layer.blobs)
        arrays = []
        for b in blobs:
            if b.HasField("num") or b.HasField("channels") or b.HasField("height") or b.HasField("width"):
                shape = (b.num, b.channels, b.height, b.width)
            else:
                shape = tuple(b.shape.dim)
            values = np.array(b.double_data, np.float64) if len(b.double_data) else np.array(b.data, np.float32)
            arrays.append(values.astype(np.float32).reshape(shape))
        out[name] = arrays
    return out


def without_blobs(net):
    copy = caffe_pb2.NetParameter()
    copy.CopyFrom(net)
    for layer in list(copy.layer) + list(copy.layers):
        layer.ClearField("blobs")
        if isinstance(layer, caffe_pb2.V1LayerParameter) and layer.HasField("layer"):
            layer.layer.ClearField("blobs")
    return copy


# ------------------------------------------------------------ round trips

def test_v2_round_trip_keeps_structure_and_data(tmp_path):
    path = tmp_path / "net.caffemodel"
    net, weights = small_net(), small_weights()
    write_caffemodel(path, net, weights)
    read_net, read_weights = read_caffemodel(path)
    assert read_net == net
    expected = dict(weights, relu1=[])
    assert set(read_weights) == set(expected)
    assert list(read_weights) == [layer.name for layer in net.layer]     # file order
    assert_same_weights({k: read_weights[k] for k in expected}, expected)
    assert_same_weights(load_weights(path), {k: read_weights[k] for k in read_weights})


def test_read_arrays_are_aligned_writable_and_independent(tmp_path):
    path = tmp_path / "net.caffemodel"
    rng = np.random.default_rng(1)
    # Names of 1..8 characters shift the payload offsets through every residue mod 4.
    weights = {"l" * k: [rng.standard_normal((k, 3)).astype(np.float32), rng.standard_normal(k).astype(np.float32)]
               for k in range(1, 9)}
    write_caffemodel(path, None, weights)
    offsets_mod4 = set()
    raw = open(path, "rb").read()
    for arrays in weights.values():
        offsets_mod4.add(raw.find(arrays[0].tobytes()) % 4)
    assert len(offsets_mod4) > 1          # the file really has misaligned payloads
    _, read = read_caffemodel(path)
    assert_same_weights(read, weights)
    roots = set()
    for arrays in read.values():
        for a in arrays:
            assert a.flags.aligned and a.flags.writeable and a.flags.c_contiguous
            root = a
            while isinstance(root, np.ndarray) and root.base is not None:
                root = root.base
            roots.add(id(root))
            assert memoryview(root).nbytes == path.stat().st_size
    assert len(roots) == 1        # zero-copy: every array is a view into the one file buffer
    before = [a.copy() for arrays in read.values() for a in arrays]
    read["llll"][0][...] = 7.0
    after = [a for arrays in read.values() for a in arrays]
    changed = [i for i, (b, a) in enumerate(zip(before, after)) if not np.array_equal(b, a)]
    assert len(changed) == 1 and np.all(read["llll"][0] == 7.0)


def test_written_file_parses_with_stock_protobuf(tmp_path):
    path = tmp_path / "net.caffemodel"
    net, weights = small_net(), small_weights()
    write_caffemodel(path, net, weights)
    stock = caffe_pb2.NetParameter.FromString(path.read_bytes())
    assert without_blobs(stock) == net
    for layer in stock.layer:
        for blob in layer.blobs:
            assert not blob.HasField("num")        # V2 form: shape, not legacy dims
            assert blob.HasField("shape")
    assert_same_weights({k: v for k, v in stock_weights(stock).items() if k in weights}, weights)


def test_decoder_agrees_with_stock_parser_on_stock_bytes(tmp_path):
    net = small_net()
    rng = np.random.default_rng(2)
    for layer, shapes in ((net.layer[0], [(4, 3, 3, 3), (4,)]), (net.layer[2], [(5, 144), (5,)])):
        for shape in shapes:
            blob = layer.blobs.add()
            blob.shape.dim.extend(shape)
            blob.data.extend(rng.standard_normal(int(np.prod(shape))).astype(np.float32).tolist())
            blob.diff.extend([1.0] * 3)          # diffs are present but not part of the weights
    path = tmp_path / "stock.caffemodel"
    path.write_bytes(net.SerializeToString())
    read_net, read_weights = read_caffemodel(path)
    stock = caffe_pb2.NetParameter.FromString(path.read_bytes())
    assert read_net == without_blobs(stock)
    assert_same_weights(read_weights, stock_weights(stock))


def test_hand_built_v1_model_with_legacy_dims_and_double_data(tmp_path):
    net = caffe_pb2.NetParameter(name="old")
    net.input.append("data")
    net.input_dim.extend([1, 3, 4, 4])
    conv = net.layers.add(name="conv", type=caffe_pb2.V1LayerParameter.CONVOLUTION, bottom=["data"], top=["conv"])
    conv.blobs_lr.extend([1, 2])
    conv.convolution_param.num_output = 2
    weight = conv.blobs.add(num=2, channels=3, height=1, width=1)
    weight.data.extend([0.5, -1.25, 2.0, 3.0, 4.5, -6.0])
    bias = conv.blobs.add(num=1, channels=1, height=1, width=2)
    bias.double_data.extend([0.1, 1e-3])                 # not exactly representable in float32
    net.layers.add(name="relu", type=caffe_pb2.V1LayerParameter.RELU, bottom=["conv"], top=["conv"])
    fc = net.layers.add(name="fc", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT, bottom=["conv"], top=["fc"])
    fc_weight = fc.blobs.add(num=1, channels=1, height=3, width=8)
    fc_weight.data.extend(np.arange(24, dtype=np.float32).tolist())
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(net.SerializeToString())

    read_net, weights = read_caffemodel(path)
    assert len(read_net.layer) == 0 and read_net == without_blobs(net)
    assert read_net.layers[0].type == caffe_pb2.V1LayerParameter.CONVOLUTION
    assert list(read_net.layers[0].blobs_lr) == [1, 2]
    assert list(weights) == ["conv", "relu", "fc"] and weights["relu"] == []
    np.testing.assert_array_equal(weights["conv"][0], np.array([0.5, -1.25, 2.0, 3.0, 4.5, -6.0],
                                                               np.float32).reshape(2, 3, 1, 1))
    assert weights["conv"][1].dtype == np.float32 and weights["conv"][1].shape == (1, 1, 1, 2)
    np.testing.assert_array_equal(weights["conv"][1].ravel(), np.array([0.1, 1e-3], np.float64).astype(np.float32))
    np.testing.assert_array_equal(weights["fc"][0], np.arange(24, dtype=np.float32).reshape(1, 1, 3, 8))
    # Caffe's loading rule fits the legacy 1x1x3x8 blob to an InnerProduct weight of 3x8.
    assert match_blob_shape(weights["fc"][0], (3, 8), "fc").shape == (3, 8)


def test_v1_net_is_written_as_v1(tmp_path):
    net = caffe_pb2.NetParameter(name="old")
    net.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    net.layers.add(name="loss", type=caffe_pb2.V1LayerParameter.SOFTMAX_LOSS)
    weights = {"ip": [np.ones((2, 3), np.float32), np.zeros(2, np.float32)]}
    path = tmp_path / "v1.caffemodel"
    write_caffemodel(path, net, weights)
    stock = caffe_pb2.NetParameter.FromString(path.read_bytes())
    assert len(stock.layer) == 0 and [l.name for l in stock.layers] == ["ip", "loss"]
    assert [tuple(b.shape.dim) for b in stock.layers[0].blobs] == [(2, 3), (2,)]
    read_net, read = read_caffemodel(path)
    assert read_net == net
    assert_same_weights(read, {"ip": weights["ip"], "loss": []})


def test_v0_layer_blobs_nested_in_v1_are_found(tmp_path):
    net = caffe_pb2.NetParameter(name="v0")
    outer = net.layers.add(bottom=["data"], top=["conv"])
    outer.layer.name = "conv"
    outer.layer.type = "conv"
    outer.layer.num_output = 2
    blob = outer.layer.blobs.add(num=1, channels=1, height=1, width=2)
    blob.data.extend([3.0, 4.0])
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(net.SerializeToString())
    read_net, weights = read_caffemodel(path)
    assert read_net == without_blobs(net) and read_net.layers[0].layer.num_output == 2
    np.testing.assert_array_equal(weights["conv"][0], np.array([[[[3.0, 4.0]]]], np.float32))


def test_unpacked_and_split_float_payloads(tmp_path):
    """Repeated floats may legally arrive unpacked or as several packed chunks."""
    values = np.array([1.5, -2.0, 3.25, 4.0, 5.5, 6.0], np.float32)
    unpacked = b"".join(wire.encode_key(5, wire.FIXED32) + v.tobytes() for v in values[:4])
    packed_tail = wire.length_header(5, 8) + values[4:].tobytes()
    shape = wire.length_header(1, 2) + bytes([2, 3])
    blob_body = unpacked + packed_tail + wire.length_header(7, len(shape)) + shape
    doubles = np.array([0.25, 1e-3], np.float64)
    blob2_body = b"".join(wire.encode_key(8, wire.FIXED64) + d.tobytes() for d in doubles) \
        + wire.length_header(7, 3) + wire.length_header(1, 1) + bytes([2])
    layer_body = (wire.length_header(1, 1) + b"x" + wire.length_header(7, len(blob_body)) + blob_body
                  + wire.length_header(7, len(blob2_body)) + blob2_body)
    path = tmp_path / "odd.caffemodel"
    path.write_bytes(wire.length_header(100, len(layer_body)) + layer_body)
    stock = caffe_pb2.NetParameter.FromString(path.read_bytes())
    expected = stock_weights(stock)
    np.testing.assert_array_equal(expected["x"][0], values.reshape(2, 3))   # the stock parser agrees
    _, weights = read_caffemodel(path)
    assert_same_weights(weights, expected)
    np.testing.assert_array_equal(weights["x"][1], doubles.astype(np.float32))


def test_write_accepts_blobs_none_net_and_replaces_existing_blobs(tmp_path):
    net = small_net()
    stale = net.layer[0].blobs.add()
    stale.data.extend([9.0] * 3)
    snapshot = net.SerializeToString()
    weights = small_weights()
    weights["conv1"][1] = Blob(data=weights["conv1"][1])       # pycaffe-style Blob objects work too
    path = tmp_path / "net.caffemodel"
    write_caffemodel(path, net, weights)
    assert net.SerializeToString() == snapshot                  # the caller's message is untouched
    _, read = read_caffemodel(path)
    np.testing.assert_array_equal(read["conv1"][1], weights["conv1"][1].data)
    assert len(read["conv1"]) == 2

    plain = {"a": [np.arange(6, dtype=np.float64).reshape(2, 3)], "b": []}
    write_caffemodel(path, None, plain)
    read_net, read = read_caffemodel(path)
    assert [l.name for l in read_net.layer] == ["a", "b"]
    assert read["a"][0].dtype == np.float32 and read["b"] == []
    np.testing.assert_array_equal(read["a"][0], plain["a"][0].astype(np.float32))


def test_write_rejects_weights_for_unknown_layers_and_non_numbers(tmp_path):
    path = tmp_path / "net.caffemodel"
    with pytest.raises(NetspecError, match="'nope'"):
        write_caffemodel(path, small_net(), {"nope": [np.zeros(2, np.float32)]})
    with pytest.raises(NetspecError, match="layer 'fc', blob 0"):
        write_caffemodel(path, small_net(), {"fc": [np.array(["a", "b"])]})
    assert not path.exists()


def test_written_file_mode_follows_umask(tmp_path):
    path = tmp_path / "net.caffemodel"
    old = os.umask(0o022)
    try:
        write_caffemodel(path, None, {"a": [np.zeros(2, np.float32)]})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# ------------------------------------------------------------ loading rule

def test_match_blob_shape_rules():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert match_blob_shape(a, (3, 4), "fc") is a
    legacy = a.reshape(1, 1, 3, 4)
    fitted = match_blob_shape(legacy, [3, 4], "fc")
    assert fitted.shape == (3, 4) and np.shares_memory(fitted, legacy)
    np.testing.assert_array_equal(fitted, a)
    assert match_blob_shape(np.zeros((1, 1, 1, 5)), (5,), "b").shape == (5,)
    assert match_blob_shape(np.zeros((1, 1, 3, 4)), (1, 3, 4), "b").shape == (1, 3, 4)
    assert match_blob_shape(np.zeros((1, 1, 1, 1)), (), "b").shape == ()
    with pytest.raises(NetspecError, match=r"fc6: blob shape \(4, 3\) does not match the net's \(3, 4\)"):
        match_blob_shape(np.zeros((4, 3)), (3, 4), "fc6")
    with pytest.raises(NetspecError):
        match_blob_shape(np.zeros((1, 3, 4)), (3, 4), "x")           # only 4-D blobs are legacy
    with pytest.raises(NetspecError):
        match_blob_shape(np.zeros((1, 1, 3, 4)), (1, 1, 1, 3, 4), "x")  # legacy fits <= 4 axes
    with pytest.raises(NetspecError):
        match_blob_shape(np.zeros((1, 1, 3, 4)), (4, 3), "x")


# ------------------------------------------------------------ solver state

def test_solverstate_round_trip_and_stock_parse(tmp_path):
    rng = np.random.default_rng(3)
    history = [rng.standard_normal((4, 3, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32),
               np.zeros((0,), np.float32)]
    path = tmp_path / "snap_iter_100.solverstate"
    write_solverstate(path, 100, 2, "snap_iter_100.caffemodel", history)
    state = read_solverstate(path)
    assert (state.iter, state.current_step, state.learned_net) == (100, 2, "snap_iter_100.caffemodel")
    assert len(state.history) == 3
    for got, want in zip(state.history, history):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    stock = caffe_pb2.SolverState.FromString(path.read_bytes())
    assert stock.iter == 100 and stock.current_step == 2
    np.testing.assert_array_equal(np.array(stock.history[0].data, np.float32).reshape(stock.history[0].shape.dim),
                                  history[0])


def test_solverstate_written_by_stock_protobuf(tmp_path):
    state = caffe_pb2.SolverState(iter=7, learned_net="a.caffemodel")
    blob = state.history.add(num=1, channels=1, height=2, width=2)
    blob.data.extend([1.0, 2.0, 3.0, 4.0])
    path = tmp_path / "a.solverstate"
    path.write_bytes(state.SerializeToString())
    read = read_solverstate(path)
    assert (read.iter, read.current_step, read.learned_net) == (7, 0, "a.caffemodel")
    np.testing.assert_array_equal(read.history[0], np.array([1, 2, 3, 4], np.float32).reshape(1, 1, 2, 2))


# ------------------------------------------------------------ bad files

def valid_bytes(tmp_path):
    path = tmp_path / "good.caffemodel"
    write_caffemodel(path, small_net(), small_weights())
    return path.read_bytes()


@pytest.mark.parametrize("cut", ["last byte", "minus 5", "half", "inside header"])
def test_truncated_file_is_reported(tmp_path, cut):
    raw = valid_bytes(tmp_path)
    keep = {"last byte": len(raw) - 1, "minus 5": len(raw) - 5, "half": len(raw) // 2, "inside header": 4}[cut]
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(raw[:keep])
    with pytest.raises(NetspecError, match=r"cut\.caffemodel: not a valid \.caffemodel \(truncated.* at byte \d+\)"):
        read_caffemodel(path)


@pytest.mark.parametrize("content, message", [
    (b"name: \"FCN\"\nlayer {\n  name: \"data\"\n  type: \"Input\"\n}\n", "looks like text"),
    (b"\xff" * 11, "varint"),
    (b"\x0a\x10abc", "truncated"),
    (b"\x0fabc", "wire type 7"),
    (b"\x07abc", "field number 0"),
    (b"\xa2\x06\x05\x3a\x03\x2a\x01\x00", "not a multiple of 4"),
    (b"", "empty"),
    (b"\x89HDF\r\n\x1a\n" + bytes(100), "HDF5"),
])
def test_invalid_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(content)
    with pytest.raises(NetspecError, match=message) as info:
        read_caffemodel(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_blob_count_mismatch_names_the_layer(tmp_path):
    net = caffe_pb2.NetParameter()
    blob = net.layer.add(name="conv").blobs.add()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([1.0] * 5)
    path = tmp_path / "m.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(NetspecError, match=r"layer 'conv', blob 0 holds 5 values but its shape \(2, 3\) needs 6"):
        read_caffemodel(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(NetspecError, match="cannot read"):
        read_caffemodel(tmp_path / "absent.caffemodel")
    with pytest.raises(NetspecError, match="cannot read"):
        read_solverstate(tmp_path)


def test_random_and_corrupted_bytes_never_escape_as_other_errors(tmp_path):
    rng = np.random.default_rng(4)
    raw = np.frombuffer(valid_bytes(tmp_path), np.uint8)
    path = tmp_path / "fuzz.caffemodel"
    path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(NetspecError):
        read_caffemodel(path)
    outcomes = set()
    for _ in range(150):
        mutated = raw.copy()
        positions = rng.integers(0, raw.size, 3)
        mutated[positions] = rng.integers(0, 256, 3, dtype=np.uint8)
        path.write_bytes(mutated.tobytes())
        try:
            read_caffemodel(path)
            outcomes.add("read")
        except NetspecError as e:
            assert "\n" not in str(e)
            outcomes.add("error")
    assert "error" in outcomes


# ------------------------------------------------------------ atomic writes

def test_failure_mid_write_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "net.caffemodel"
    write_caffemodel(path, small_net(), small_weights(0))
    old = path.read_bytes()
    real_blob_pieces = wire.blob_pieces
    calls = []

    def failing_blob_pieces(array):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected failure")
        return real_blob_pieces(array)

    monkeypatch.setattr(wire, "blob_pieces", failing_blob_pieces)
    with pytest.raises(RuntimeError, match="injected"):
        write_caffemodel(path, small_net(), small_weights(1))
    assert path.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["net.caffemodel"]   # no temporary file left behind

    monkeypatch.setattr(wire, "blob_pieces", real_blob_pieces)

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(caffemodel.os, "fsync", failing_fsync)
    with pytest.raises(NetspecError, match="net.solverstate: cannot write \\(No space left on device\\)"):
        write_solverstate(tmp_path / "net.solverstate", 1, 0, "", [np.zeros(3, np.float32)])
    with pytest.raises(NetspecError, match="cannot write"):
        write_caffemodel(path, small_net(), small_weights(1))
    assert path.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["net.caffemodel"]

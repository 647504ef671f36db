"""``caffe.io`` (``netspec.io``): every function against NumPy computations written here
independently, and hand-built protos."""
import numpy as np
import pytest
from PIL import Image

import netspec as caffe
from netspec.proto import caffe_pb2

# ------------------------------------------------------------------ NumPy references


def np_linear_grid_matrix(n_in, n_out):
    """(n_out, n_in) weights of linear interpolation at pixel centres,
    x = (o + 0.5) * n_in / n_out - 0.5, with zeros outside the image."""
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        x = (o + 0.5) * n_in / n_out - 0.5
        i0 = int(np.floor(x))
        t = x - i0
        for i, w in ((i0, 1 - t), (i0 + 1, t)):
            if 0 <= i < n_in:
                m[o, i] += w
    return m


def np_gaussian_blur(img, axis, sigma):
    """Gaussian smoothing along ``axis`` (kernel radius int(4 sigma + 0.5), zero padding)."""
    if sigma <= 0:
        return img
    r = int(4.0 * sigma + 0.5)
    x = np.arange(-r, r + 1)
    k = np.exp(-0.5 * x ** 2 / sigma ** 2)
    k /= k.sum()
    img = np.moveaxis(img, axis, 0)
    pad = np.concatenate([np.zeros((r,) + img.shape[1:]), img, np.zeros((r,) + img.shape[1:])])
    out = sum(k[j] * pad[j:j + img.shape[0]] for j in range(2 * r + 1))
    return np.moveaxis(out, 0, axis)


def np_resize_unit(img, new_dims):
    """scikit-image's resize(order=1, mode='constant') of an (H, W, K) image in [0, 1]:
    Gaussian anti-aliasing (sigma (H/h - 1)/2) on shrinking axes, then bilinear."""
    img = img.astype(np.float64)
    h, w = img.shape[:2]
    nh, nw = new_dims
    if nh < h or nw < w:
        img = np_gaussian_blur(img, 0, max(0.0, (h / nh - 1) / 2))
        img = np_gaussian_blur(img, 1, max(0.0, (w / nw - 1) / 2))
    out = np.einsum("oh,hwk->owk", np_linear_grid_matrix(h, nh), img)
    out = np.einsum("pw,owk->opk", np_linear_grid_matrix(w, nw), out)
    return np.clip(out, 0, 1)


def np_resize_image(im, new_dims):
    """pycaffe's resize_image for 1/3-channel images: to [0, 1], resize, back."""
    lo, hi = float(im.min()), float(im.max())
    return np_resize_unit((im - lo) / (hi - lo), new_dims) * (hi - lo) + lo


def np_oversample_positions(h, w, ch, cw):
    """(y0, x0) of pycaffe's five crops: corners TL, TR, BL, BR, then the centre."""
    cy, cx = int(h / 2.0 - ch / 2.0), int(w / 2.0 - cw / 2.0)
    return [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), (cy, cx)]


# ------------------------------------------------------------------ module surface

def test_module_surface():
    assert caffe.io.Transformer is caffe.io.Transformer
    assert caffe.proto.caffe_pb2.BlobProto is caffe_pb2.BlobProto
    types = caffe.layer_type_list()
    assert types == sorted(types) and len(set(types)) == len(types)
    assert all(isinstance(t, str) for t in types)
    for t in ("Convolution", "InnerProduct", "Softmax", "Python", "Input", "Pooling"):
        assert t in types


# ------------------------------------------------------------------ protos

def test_blobproto_to_array_shape_and_legacy_dims():
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 3, 4])
    values = np.arange(24) * 0.5
    blob.data.extend(values.tolist())
    blob.diff.extend((-values).tolist())
    a = caffe.io.blobproto_to_array(blob)
    assert a.dtype == np.float64 and a.shape == (2, 3, 4)
    np.testing.assert_array_equal(a, values.reshape(2, 3, 4))
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob, return_diff=True), -values.reshape(2, 3, 4))

    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=3, width=2)
    legacy.data.extend(range(12))
    assert caffe.io.blobproto_to_array(legacy).shape == (1, 2, 3, 2)
    partial = caffe_pb2.BlobProto(channels=12)      # one legacy field set: the others are 0 -> 4-d
    partial.data.extend(range(12))
    with pytest.raises(ValueError):
        caffe.io.blobproto_to_array(partial)       # (0, 12, 0, 0) cannot hold 12 values, as in pycaffe


def test_array_to_blobproto_and_vectors():
    rng = np.random.default_rng(0)
    arr = rng.standard_normal((2, 3, 5))
    diff = rng.standard_normal((2, 3, 5))
    blob = caffe.io.array_to_blobproto(arr, diff)
    assert list(blob.shape.dim) == [2, 3, 5]
    assert not blob.HasField("num")
    np.testing.assert_array_equal(np.array(blob.data), arr.astype(np.float32).ravel())
    np.testing.assert_array_equal(np.array(blob.diff), diff.astype(np.float32).ravel())
    assert len(caffe.io.array_to_blobproto(arr).diff) == 0
    assert list(caffe.io.array_to_blobproto(np.zeros((4,), np.uint8)).shape.dim) == [4]

    arrays = [arr, np.arange(6, dtype=np.int32).reshape(3, 2), np.float32(rng.standard_normal(7))]
    s = caffe.io.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(s, bytes)
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(s)
    assert [list(b.shape.dim) for b in vec.blobs] == [[2, 3, 5], [3, 2], [7]]
    back = caffe.io.blobprotovector_str_to_arraylist(s)
    for a, b in zip(arrays, back):
        assert b.dtype == np.float64 and b.shape == a.shape
        np.testing.assert_array_equal(b, a.astype(np.float32))


def test_datum_roundtrip():
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    datum = caffe.io.array_to_datum(u8, label=7)
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 4, 5, 7)
    assert datum.data == u8.tobytes() and len(datum.float_data) == 0
    back = caffe.io.datum_to_array(datum)
    assert back.dtype == np.uint8 and back.flags.writeable
    np.testing.assert_array_equal(back, u8)

    f = rng.standard_normal((2, 3, 1)).astype(np.float32)
    datum = caffe.io.array_to_datum(f)
    assert not datum.HasField("label") and datum.data == b""
    np.testing.assert_array_equal(np.array(datum.float_data), f.ravel())
    back = caffe.io.datum_to_array(datum)
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, f)

    parsed = caffe_pb2.Datum.FromString(caffe.io.array_to_datum(u8, 3).SerializeToString())
    np.testing.assert_array_equal(caffe.io.datum_to_array(parsed), u8)
    with pytest.raises(ValueError, match="Incorrect array shape."):
        caffe.io.array_to_datum(np.zeros((2, 2)))


# ------------------------------------------------------------------ images

def test_load_image(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    img = caffe.io.load_image(str(tmp_path / "rgb.png"))
    assert img.dtype == np.float32 and img.shape == (7, 9, 3)
    np.testing.assert_array_equal(img, (rgb / 255.0).astype(np.float32))
    gray = caffe.io.load_image(str(tmp_path / "rgb.png"), color=False)
    luma = (rgb / 255.0) @ np.array([0.2125, 0.7154, 0.0721])
    assert gray.shape == (7, 9, 1) and gray.dtype == np.float32
    np.testing.assert_allclose(gray[..., 0], luma, rtol=1e-6, atol=1e-7)

    g = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    Image.fromarray(g).save(tmp_path / "gray.png")
    as_color = caffe.io.load_image(str(tmp_path / "gray.png"))
    assert as_color.shape == (5, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(as_color[..., c], (g / 255.0).astype(np.float32))
    as_gray = caffe.io.load_image(str(tmp_path / "gray.png"), color=False)
    assert as_gray.shape == (5, 6, 1)
    np.testing.assert_array_equal(as_gray[..., 0], (g / 255.0).astype(np.float32))

    rgba = np.concatenate([rgb, rng.integers(0, 256, (7, 9, 1), dtype=np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(caffe.io.load_image(str(tmp_path / "rgba.png")), (rgb / 255.0).astype(np.float32))

    g16 = rng.integers(0, 65536, (4, 3), dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "g16.png"), color=False)[..., 0],
                               g16 / 65535.0, rtol=1e-6)

    adaptive = getattr(Image, "Palette", Image).ADAPTIVE
    Image.fromarray(rgb).convert("P", palette=adaptive, colors=16).save(tmp_path / "pal.png")
    expanded = np.asarray(Image.open(tmp_path / "pal.png").convert("RGB")) / 255.0
    np.testing.assert_array_equal(caffe.io.load_image(str(tmp_path / "pal.png")), expanded.astype(np.float32))

    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=90)
    decoded = np.asarray(Image.open(tmp_path / "rgb.jpg")) / 255.0
    np.testing.assert_array_equal(caffe.io.load_image(str(tmp_path / "rgb.jpg")), decoded.astype(np.float32))


@pytest.mark.parametrize("shape,new", [((10, 12, 3), (23, 17)),    # up both axes
                                       ((31, 25, 3), (9, 12)),     # down: anti-aliasing
                                       ((16, 20, 1), (8, 40)),     # down one axis, up the other
                                       ((12, 12, 3), (12, 12))])   # same size
def test_resize_image_matches_numpy(shape, new):
    rng = np.random.default_rng(3)
    im = (rng.random(shape) * 200 - 50).astype(np.float32)
    out = caffe.io.resize_image(im, new)
    assert out.dtype == np.float32 and out.shape == new + (shape[2],)
    np.testing.assert_allclose(out, np_resize_image(im, new), rtol=1e-5, atol=2e-4)


def test_resize_image_constant_and_other_channel_counts():
    const = np.full((5, 7, 3), 0.25, np.float32)
    out = caffe.io.resize_image(const, (9, 4))
    assert out.dtype == np.float32 and out.shape == (9, 4, 3) and (out == 0.25).all()

    # neither 1 nor 3 channels: ndimage.zoom's (non-grid) linear interpolation, x = o (H - 1)/(h - 1)
    rng = np.random.default_rng(4)
    im = rng.random((6, 8, 4))
    out = caffe.io.resize_image(im, (11, 15))
    assert out.dtype == np.float32 and out.shape == (11, 15, 4)

    def matrix(n_in, n_out):
        m = np.zeros((n_out, n_in))
        for o in range(n_out):
            x = o * (n_in - 1) / (n_out - 1)
            i0 = min(int(np.floor(x)), n_in - 2)
            m[o, i0], m[o, i0 + 1] = 1 - (x - i0), x - i0
        return m
    ref = np.einsum("oh,hwk->owk", matrix(6, 11), im)
    ref = np.einsum("pw,owk->opk", matrix(8, 15), ref)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_resize_image_agrees_with_scikit_image_when_installed():
    skt = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(5)
    for shape, new in [((20, 30, 3), (7, 41)), ((33, 17, 1), (20, 40)), ((9, 9, 3), (3, 27))]:
        im = rng.random(shape).astype(np.float32) * 3 - 1
        lo, hi = im.min(), im.max()
        for order in (0, 1, 3):
            ref = skt.resize((im - lo) / (hi - lo), new, order=order, mode="constant") * (hi - lo) + lo
            np.testing.assert_array_equal(caffe.io.resize_image(im, new, order), ref.astype(np.float32))


def test_oversample_crop_positions():
    h, w, c = 9, 12, 2
    ch, cw = 4, 5
    yy, xx, cc = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    images = [(yy * 1000 + xx * 10 + cc).astype(np.float32), (yy * 1000 + xx * 10 + cc + 5).astype(np.float32)]
    crops = caffe.io.oversample(images, (ch, cw))
    assert crops.shape == (20, ch, cw, c) and crops.dtype == np.float32
    # pycaffe's centre box: int(4.5 - 2) = 2 and int(6 - 2.5) = 3
    positions = np_oversample_positions(h, w, ch, cw)
    assert positions == [(0, 0), (0, 7), (5, 0), (5, 7), (2, 3)]
    for n, im in enumerate(images):
        for k, (y0, x0) in enumerate(positions):
            window = im[y0:y0 + ch, x0:x0 + cw]
            np.testing.assert_array_equal(crops[10 * n + k], window)
            np.testing.assert_array_equal(crops[10 * n + 5 + k], window[:, ::-1])   # its mirror


# ------------------------------------------------------------------ Transformer

def make_transformer(mean=None):
    t = caffe.io.Transformer({"data": (2, 3, 6, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    if mean is not None:
        t.set_mean("data", mean)
    t.set_input_scale("data", 0.5)
    return t


def test_transformer_preprocess_matches_numpy_and_deprocess_inverts_it():
    rng = np.random.default_rng(6)
    mean = np.array([104.0, 117.0, 123.0])
    t = make_transformer(mean)
    image = rng.random((6, 5, 3))
    out = t.preprocess("data", image)
    ref = ((image.transpose(2, 0, 1)[::-1] * 255.0) - mean[:, None, None]) * 0.5
    assert out.dtype == np.float32 and out.shape == (3, 6, 5)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(t.deprocess("data", out), image, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t.deprocess("data", out[None]), image, rtol=1e-5, atol=1e-6)   # squeezed

    # an image of another size is resized first (resize_image), then the same steps
    big = rng.random((9, 7, 3)).astype(np.float32)
    out = t.preprocess("data", big)
    ref = ((np_resize_image(big, (6, 5)).transpose(2, 0, 1)[::-1] * 255.0) - mean[:, None, None]) * 0.5
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-3)

    # a full (C, H, W) mean of the input's size is subtracted element-wise
    full = rng.random((3, 6, 5)) * 100
    t = make_transformer(full)
    image = rng.random((6, 5, 3))
    np.testing.assert_allclose(t.preprocess("data", image),
                               ((image.transpose(2, 0, 1)[::-1] * 255.0) - full) * 0.5, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(t.deprocess("data", t.preprocess("data", image)), image, rtol=1e-5, atol=1e-5)


def test_set_mean_resizes_a_mean_of_another_size():
    rng = np.random.default_rng(7)
    mean = rng.random((3, 10, 8)) * 255
    t = make_transformer(mean)
    lo, hi = mean.min(), mean.max()
    ref = np_resize_unit(((mean - lo) / (hi - lo)).transpose(1, 2, 0), (6, 5)).transpose(2, 0, 1) * (hi - lo) + lo
    assert t.mean["data"].shape == (3, 6, 5)
    np.testing.assert_allclose(t.mean["data"], ref, rtol=1e-5, atol=1e-3)


def test_transformer_errors():
    t = caffe.io.Transformer({"data": (1, 3, 4, 4)})
    with pytest.raises(Exception, match="label is not one of the net inputs"):
        t.preprocess("label", np.zeros((4, 4, 3)))
    with pytest.raises(Exception, match="Transpose order needs to have the same number of dimensions"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(Exception, match="Channel swap needs to have the same number of dimensions"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="Mean channels incompatible with input."):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(ValueError, match="Mean shape invalid"):
        t.set_mean("data", np.zeros((1, 3, 4, 4)))
    with pytest.raises(ValueError):               # (H, W) is (1, H, W): 1 channel, not 3 (pycaffe fails too)
        t.set_mean("data", np.arange(16.0).reshape(4, 4))
    gray = caffe.io.Transformer({"data": (1, 1, 4, 4)})
    gray.set_transpose("data", (2, 0, 1))
    gray.set_mean("data", np.ones((4, 4)))        # the input's size: kept as it is, broadcast
    assert gray.mean["data"].shape == (4, 4)
    np.testing.assert_array_equal(gray.preprocess("data", np.full((4, 4, 1), 3.0)), np.full((1, 4, 4), 2.0))

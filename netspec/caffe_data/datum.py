"""Caffe's ``Datum`` records and images, as ``caffe/util/io.cpp`` reads and writes them.

Images are handled the way Caffe's OpenCV code does (``cv::imread``/``cv::imdecode``
give BGR or grey ``uint8`` images, ``cv::resize`` with INTER_LINEAR), through
``opencv-python-headless`` so that decoded and resized pixels are OpenCV's own.
An image here is an ``(H, W, C)`` uint8 array (C = 1 or 3, BGR), i.e. a ``cv::Mat``;
a raw Datum's values are ``(C, H, W)``.
"""
import numpy as np

from ..errors import NetspecError

COLOR, GRAYSCALE, UNCHANGED = 1, 0, -1     # cv::IMREAD_COLOR, IMREAD_GRAYSCALE, IMREAD_UNCHANGED


def cv2():
    """The ``cv2`` module, or a one-line error saying how to install it."""
    try:
        import cv2 as module
    except ImportError:
        raise NetspecError("Caffe's image data needs OpenCV: pip install opencv-python-headless") from None
    return module


def _as_mat(image):
    """OpenCV's 2-D grey result as (H, W, 1); colour stays (H, W, 3)."""
    if image is None:
        return None
    return image[:, :, np.newaxis] if image.ndim == 2 else image


def read_image(path, height=0, width=0, is_color=True):
    """Caffe's ``ReadImageToCVMat``: imread (colour or grey), then resize to
    ``(height, width)`` when both are positive.  None when the file cannot be read."""
    cv = cv2()
    try:
        image = cv.imread(str(path), COLOR if is_color else GRAYSCALE)
    except cv.error:    # e.g. a header declaring more than CV_IO_MAX_IMAGE_PIXELS pixels
        return None
    if image is None:
        return None
    if height > 0 and width > 0:
        image = cv.resize(image, (int(width), int(height)), interpolation=cv.INTER_LINEAR)
    return _as_mat(image)


def decode_image(data, flag=UNCHANGED):
    """``cv::imdecode`` of encoded bytes: ``flag`` COLOR, GRAYSCALE or UNCHANGED (Caffe's
    ``DecodeDatumToCVMatNative``).  None when the bytes do not decode."""
    cv = cv2()
    buffer = np.frombuffer(data, np.uint8)
    if buffer.size == 0:
        return None
    try:
        return _as_mat(cv.imdecode(buffer, flag))
    except cv.error:    # e.g. a header declaring more than CV_IO_MAX_IMAGE_PIXELS pixels
        return None


def encode_image(image, encoding):
    """``cv::imencode("." + encoding, image)`` as bytes."""
    ok, buffer = cv2().imencode("." + encoding, image)
    if not ok:
        raise NetspecError(f'cannot encode an image as "{encoding}"; use jpg or png')
    return buffer.tobytes()


def parse_datum(value, where):
    """A ``caffe.Datum`` from a record's bytes; ``where`` names the record in errors."""
    from ..proto import caffe_pb2
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(bytes(value))
    except Exception as e:
        raise NetspecError(f"{where}: not a caffe.Datum ({type(e).__name__}); "
                           "write records with netspec convert-imageset") from None
    return datum


def datum_array(datum, where, force_color=False, force_gray=False):
    """A Datum's values: ``(C, H, W)`` uint8 (raw ``data`` or a decoded encoded image)
    or float32 (``float_data``).  Encoded Datums decode as ``DataTransformer`` does:
    natively (``imdecode(-1)``) unless ``force_color``/``force_gray`` say otherwise."""
    if datum.encoded:
        if force_color and force_gray:
            raise NetspecError(f"{where}: transform_param sets both force_color and force_gray")
        flag = COLOR if force_color else GRAYSCALE if force_gray else UNCHANGED
        image = decode_image(datum.data, flag)
        if image is None:
            raise NetspecError(f"{where}: encoded Datum does not decode as an image "
                               f"({len(datum.data)} bytes); re-create the database")
        if image.dtype != np.uint8:
            raise NetspecError(f"{where}: encoded image has {image.dtype} pixels; Caffe needs 8-bit images")
        return image.transpose(2, 0, 1)
    c, h, w = datum.channels, datum.height, datum.width
    if c <= 0 or h <= 0 or w <= 0:
        # (an empty image would make an empty blob of a shape NumPy may not even hold:
        # channels 2^30 x height 0 x width 2^31, found by tests/test_fuzz.py)
        raise NetspecError(f"{where}: Datum has channels={c}, height={h}, width={w}; "
                           "each must be > 0")
    size = c * h * w
    if datum.data:
        if len(datum.data) != size:
            raise NetspecError(f"{where}: Datum holds {len(datum.data)} bytes of data but "
                               f"channels*height*width = {c}*{h}*{w} = {size}")
        return np.frombuffer(datum.data, np.uint8).reshape(c, h, w)
    if len(datum.float_data) != size:
        raise NetspecError(f"{where}: Datum holds {len(datum.float_data)} float_data values but "
                           f"channels*height*width = {c}*{h}*{w} = {size}")
    return np.asarray(datum.float_data, np.float32).reshape(c, h, w)


def image_to_datum(image, label=0):
    """Caffe's ``CVMatToDatum`` (+ label): an (H, W, C) uint8 image as a raw CHW Datum."""
    from ..proto import caffe_pb2
    image = _as_mat(np.asarray(image))
    if image.dtype != np.uint8:
        raise NetspecError(f"images must have 8-bit pixels, got {image.dtype}")
    h, w, c = image.shape
    datum = caffe_pb2.Datum(channels=c, height=h, width=w, label=int(label), encoded=False)
    datum.data = np.ascontiguousarray(image.transpose(2, 0, 1)).tobytes()
    return datum


def _match_ext(filename, encoding):
    dot = filename.rfind(".")
    ext = (filename[dot + 1:] if dot >= 0 else filename).lower()
    encoding = encoding.lower()
    return ext == encoding or (encoding == "jpg" and ext == "jpeg")


def read_file_to_datum(path, label):
    """Caffe's ``ReadFileToDatum``: the file's bytes as an encoded Datum (None if unreadable)."""
    from ..proto import caffe_pb2
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return caffe_pb2.Datum(data=data, label=int(label), encoded=True)


def read_image_to_datum(path, label, height=0, width=0, is_color=True, encoding=""):
    """Caffe's ``ReadImageToDatum``: None when the image cannot be read.  With an
    ``encoding``, the file's own bytes are stored when they already are that format at
    the requested colour and size; otherwise the (resized) image is re-encoded."""
    image = read_image(path, height, width, is_color)
    if image is None:
        return None
    if encoding:
        if (image.shape[2] == 3) == is_color and not height and not width and _match_ext(str(path), encoding):
            return read_file_to_datum(path, label)
        from ..proto import caffe_pb2
        return caffe_pb2.Datum(data=encode_image(image, encoding), label=int(label), encoded=True)
    return image_to_datum(image, label)


def atoi(text):
    """C's ``atoi``: optional whitespace and sign, then digits; anything else ends it (0 if none)."""
    text = text.lstrip(" \t\n\v\f\r")
    sign, i = 1, 0
    if text[:1] in ("+", "-"):
        sign, i = (-1 if text[0] == "-" else 1), 1
    j = i
    while j < len(text) and text[j].isdigit() and text[j].isascii():
        j += 1
    return sign * int(text[i:j]) if j > i else 0


def read_image_list(path, who):
    """A Caffe image list (``ImageData`` source, ``convert_imageset`` LISTFILE): one
    ``path label`` per line, split at the last space as Caffe does.  Returns
    ``[(path, label, line number)]``; blank lines are skipped."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise NetspecError(f"{who}: cannot read image list {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise NetspecError(f"{who}: image list {path} line {line} is not UTF-8 text "
                           f"(byte 0x{data[e.start]:02x}); give one \"path label\" per line") from None
    lines = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        pos = line.rfind(" ")
        name = line if pos < 0 else line[:pos]
        lines.append((name, atoi(line[pos + 1:]), number))
    if not lines:
        raise NetspecError(f"{who}: image list {path} is empty; give one \"path label\" per line")
    return lines

"""Binary ``.caffemodel`` and ``.solverstate`` files, read and written fast.

A ``.caffemodel`` is a serialized ``caffe.NetParameter`` whose layers carry
their parameter blobs; a ``.solverstate`` is a ``caffe.SolverState`` whose
``history`` blobs hold the solver's momentum.  Blobs are decoded and encoded
at the wire level (``netspec.wire``); everything else goes through the real
protobuf classes, parsed from the file's bytes with the blobs cut out.

Weights are returned as ``{layer_name: [float32 array, ...]}`` in file order,
one entry per layer (an empty list for layers without blobs).  Blobs stored
with the legacy num/channels/height/width fields come back 4-D;
``match_blob_shape`` applies Caffe's rule for fitting them to a net's blob.

Read arrays are writable, aligned views into one buffer holding the file:
keeping any of them alive keeps the whole file in memory.

Files from Caffe's forks (SSD, PSPNet, SegNet, Faster R-CNN, R-FCN, YOLO ports,
NVCaffe, ...) put their layers' parameters at LayerParameter field numbers that
BVLC's schema reads as something else (PSPNet's interp_param 143 is BVLC's
input_param, SegNet's upsample_param 137 is embed_param, ...), and no one schema
decodes them all.  So, as TensorRT and OpenCV do, a layer's parameters are taken
from the text prototxt, and the binary is trusted only for what weights need:

* A V2 layer whose ``type`` is one of BVLC Caffe's (or netspec's own Pair*
  types) is parsed whole, as before: BVLC files read exactly as they always did.
* A V2 layer of any other type (a fork's) keeps only the fields every Caffe
  numbers alike -- name, type, bottom, top, loss_weight, param, include,
  exclude, phase, propagate_down -- and its blobs; its ``*_param`` fields are
  dropped, whatever their numbers.
* A layer (V2 or V1) whose remaining bytes still do not parse with netspec's
  schema (e.g. a BVLC type carrying a fork's field at a colliding number with a
  different wire type) falls back to its name and type (V1: name, type,
  bottom, top) and its blobs.

Writing never puts a fork's parameters at a number BVLC reads as something
else: netspec's schema holds fork parameters only at the private
LayerParameter numbers 3500-3599 (``norm_param`` 3500 ... ``reorg_param``
3511; BVLC and the forks use none of them and read them as unknown fields), and
``write_caffemodel`` drops unknown fields (e.g. ones kept from a parsed file)
from every message it writes.
"""
import math
import mmap
import os
import secrets
from typing import NamedTuple

import numpy as np
from google.protobuf.message import DecodeError

from netspec import wire
from netspec.blob import Blob
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2

# Field numbers (BVLC caffe.proto).
NET_LAYERS_V1, NET_LAYER = 2, 100
V1_LAYER_V0, V1_BLOBS = 1, 6
V0_BLOBS = 50
LAYER_BLOBS = 7
STATE_HISTORY = 3
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class SolverState(NamedTuple):
    """The contents of a ``.solverstate``."""
    iter: int
    current_step: int
    learned_net: str
    history: list


# ------------------------------------------------------------------ reading

def read_caffemodel(path):
    """Read a binary ``.caffemodel``: return ``(net_param, weights)``.

    ``net_param`` is a ``caffe_pb2.NetParameter`` holding the layers' structure
    without blob data (V1 ``layers`` stay V1; layers of types BVLC does not know
    keep only their general fields, see the module docstring); ``weights`` maps
    each layer's name to its list of float32 arrays, in file order."""
    buffer = _read_bytes(path)
    decoder = wire.BlobDecoder(buffer)
    pieces = []        # bytes of top-level non-layer fields, or (field number, layer body)
    layer_blobs = []   # (field number, blobs) per layer, in file order
    try:
        for field in wire.iter_fields(decoder.view, 0, len(buffer)):
            if field.number == NET_LAYER:
                wire.expect_length_delimited(field, "layer")
                body, blobs = _split_message(decoder, field.value, LAYER_BLOBS)
                if _wire_type_name(body) not in BVLC_LAYER_TYPES:
                    body = _keep_fields(body, _GENERAL_LAYER_FIELDS)
            elif field.number == NET_LAYERS_V1:
                wire.expect_length_delimited(field, "layers")
                body, blobs = _split_message(decoder, field.value, V1_BLOBS, nested=V1_LAYER_V0)
            else:
                pieces.append(bytes(decoder.view[field.start:field.end]))
                continue
            pieces.append((field.number, body))
            layer_blobs.append((field.number, blobs))
    except wire.WireError as e:
        raise _invalid(path, "caffemodel", e, buffer) from None
    try:
        net = caffe_pb2.NetParameter.FromString(_join_structure(pieces))
    except DecodeError:
        try:   # some layer does not parse: cut each such layer down to name and type
            net = caffe_pb2.NetParameter.FromString(_join_structure(pieces, check_layers=True))
        except (DecodeError, wire.WireError) as e:
            raise _invalid(path, "caffemodel", f"does not parse as caffe.NetParameter: {e}", buffer) from None
    try:
        return net, _name_weights(net, layer_blobs)
    except _BlobError as e:
        raise NetspecError(f"{path}: {e}") from None


# Layer types whose LayerParameter fields netspec's schema decodes as the writer meant:
# BVLC Caffe's types (master and older registered names) and netspec's own extensions.
BVLC_LAYER_TYPES = frozenset("""
    AbsVal Accuracy ArgMax BatchNorm BatchReindex Bias BNLL Clip Concat ContrastiveLoss
    Convolution Crop Data Deconvolution Dropout DummyData Eltwise ELU Embed EuclideanLoss
    Exp Filter Flatten HDF5Data HDF5Output HingeLoss Im2col ImageData InfogainLoss
    InnerProduct Input Log LRN LSTM LSTMUnit MemoryData MultinomialLogisticLoss MVN
    Parameter Pooling Power PReLU Python Recurrent Reduction ReLU Reshape RNN Scale
    Sigmoid SigmoidCrossEntropyLoss Silence Slice Softmax SoftmaxWithLoss Split SPP Swish
    TanH Threshold Tile WindowData
    PairCompose PairRegionLoss PairTranspose
""".split())

# LayerParameter fields numbered alike in BVLC and every fork, with their wire types:
# name 1, type 2, bottom 3, top 4, loss_weight 5, param 6, include 8, exclude 9,
# phase 10, propagate_down 11 (blobs 7 are cut out before).
_L, _V, _F32 = wire.LENGTH, wire.VARINT, wire.FIXED32
_GENERAL_LAYER_FIELDS = {1: {_L}, 2: {_L}, 3: {_L}, 4: {_L}, 5: {_F32, _L}, 6: {_L},
                         8: {_L}, 9: {_L}, 10: {_V}, 11: {_V, _L}}
_NAME_TYPE_FIELDS = {1: {_L}, 2: {_L}}
# V1LayerParameter: bottom 2, top 3, name 4, type 5 (an enum).
_V1_NAME_TYPE_FIELDS = {2: {_L}, 3: {_L}, 4: {_L}, 5: {_V}}


def _wire_type_name(body):
    """The ``type`` string (field 2, last occurrence wins) of a LayerParameter's bytes."""
    type_name = ""
    for field in wire.iter_fields(body, 0, len(body)):
        if field.number == 2 and field.wire_type == wire.LENGTH:
            type_name = bytes(body[field.value[0]:field.value[1]]).decode("utf-8", "replace")
    return type_name


def _keep_fields(body, allowed):
    """``body`` (a message's bytes) with only the fields ``allowed`` maps to their wire type."""
    kept = bytearray()
    for field in wire.iter_fields(body, 0, len(body)):
        if field.wire_type in allowed.get(field.number, ()):
            kept += body[field.start:field.end]
    return bytes(kept)


def _join_structure(pieces, check_layers=False):
    """The NetParameter bytes of ``pieces``; with ``check_layers``, each layer that does
    not parse alone is cut down to its name and type."""
    out = bytearray()
    for piece in pieces:
        if isinstance(piece, bytes):
            out += piece
            continue
        number, body = piece
        if check_layers:
            body = _parseable_layer(number, body)
        out += wire.length_header(number, len(body)) + body
    return bytes(out)


def _parseable_layer(number, body):
    message = caffe_pb2.LayerParameter if number == NET_LAYER else caffe_pb2.V1LayerParameter
    try:
        message.FromString(body)
        return body
    except DecodeError:
        return _keep_fields(body, _NAME_TYPE_FIELDS if number == NET_LAYER else _V1_NAME_TYPE_FIELDS)


def load_weights(path):
    """The ``weights`` dict of ``read_caffemodel(path)``."""
    return read_caffemodel(path)[1]


def read_solverstate(path):
    """Read a binary ``.solverstate``."""
    buffer = _read_bytes(path, "solverstate")
    decoder = wire.BlobDecoder(buffer)
    structure = bytearray()
    history = []
    try:
        for field in wire.iter_fields(decoder.view, 0, len(buffer)):
            if field.number == STATE_HISTORY:
                wire.expect_length_delimited(field, "history")
                history.append(_blob_array(decoder.decode(*field.value), f"history blob {len(history)}"))
            else:
                structure += decoder.view[field.start:field.end]
    except wire.WireError as e:
        raise _invalid(path, "solverstate", e, buffer) from None
    except _BlobError as e:
        raise NetspecError(f"{path}: {e}") from None
    try:
        state = caffe_pb2.SolverState.FromString(bytes(structure))
    except DecodeError as e:
        raise _invalid(path, "solverstate", f"does not parse as caffe.SolverState: {e}", buffer) from None
    return SolverState(state.iter, state.current_step, state.learned_net, history)


class _BlobError(Exception):
    """A blob whose values do not fit its shape (message names the blob)."""


def _split_message(decoder, span, blobs_field, nested=None):
    """Cut the blobs out of the layer message at ``span``.

    Returns ``(body, blobs)``: the message's bytes without its ``blobs_field``
    fields, and those blobs decoded (``wire.BlobContents``, not yet shaped).
    ``nested`` is the field number of a V0 layer inside a V1 layer, whose blobs
    (field 50) are cut out too."""
    start, end = span
    body = bytearray()
    blobs = []
    for field in wire.iter_fields(decoder.view, start, end):
        if field.number == blobs_field:
            wire.expect_length_delimited(field, "blobs")
            blobs.append(decoder.decode(*field.value))
        elif field.number == nested and field.wire_type == wire.LENGTH:
            inner, inner_blobs = _split_message(decoder, field.value, V0_BLOBS)
            body += wire.length_header(field.number, len(inner)) + inner
            blobs.extend(inner_blobs)
        else:
            body += decoder.view[field.start:field.end]   # copied now: decoding blobs may move bytes
    return bytes(body), blobs


INT_MAX = 2 ** 31 - 1


def _blob_array(blob, what):
    """Give a decoded blob's values their shape, checking the count as Caffe does
    (``Blob::Reshape``: every dimension in [0, INT_MAX], the count what the data holds)."""
    if any(d < 0 or d > INT_MAX for d in blob.shape):
        raise _BlobError(f"{what} has shape {_format_shape(blob.shape)}, with a dimension outside "
                         f"[0, {INT_MAX}]")
    expected = math.prod(blob.shape)          # exact: no int64 wrap-around
    if expected != blob.values.size:
        raise _BlobError(f"{what} holds {blob.values.size} values but its shape "
                         f"{_format_shape(blob.shape)} needs {expected}")
    if math.prod(d for d in blob.shape if d) > INT_MAX ** 2:
        raise _BlobError(f"{what} has shape {_format_shape(blob.shape)}, too large an array "
                         "even with no values")
    return blob.values.reshape(blob.shape)


def _name_weights(net, layer_blobs):
    """Key each layer's shaped blobs by its name; as in Caffe, a later layer of the same name wins."""
    names = {NET_LAYER: iter([layer.name for layer in net.layer]),
             NET_LAYERS_V1: iter([layer.name or layer.layer.name for layer in net.layers])}
    weights = {}
    for number, blobs in layer_blobs:
        name = next(names[number])
        weights[name] = [_blob_array(blob, f"layer '{name}', blob {i}") for i, blob in enumerate(blobs)]
    return weights


def _read_bytes(path, kind="caffemodel"):
    """The whole file in one writable uint8 array, so arrays viewing it are writable.

    The memory is a fresh anonymous mapping, not a zero-filled ``bytearray``
    (whose pages are touched twice) nor a NumPy array (marked for huge pages,
    whose allocation can stall for seconds on a busy host)."""
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            buffer = _anonymous_memory(size)
            done = 0
            while done < size:
                n = f.readinto(memoryview(buffer[done:]))
                if not n:
                    break
                done += n
    except OSError as e:
        raise NetspecError(f"{path}: cannot read the .{kind} ({e.strerror or e})") from None
    if done == 0:
        raise NetspecError(f"{path}: the .{kind} is empty (was the download or snapshot cut short?)")
    if buffer[:8].tobytes() == HDF5_SIGNATURE:
        raise NetspecError(f"{path}: this is an HDF5 snapshot (snapshot_format: HDF5), which netspec does not read; "
                           "save it in BINARYPROTO format")
    return buffer[:done]


def _anonymous_memory(size):
    """``size`` writable bytes as a uint8 array, pre-faulted where Linux allows."""
    if size == 0:
        return np.zeros(0, np.uint8)
    if hasattr(mmap, "MAP_POPULATE"):
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
        return np.frombuffer(mmap.mmap(-1, size, flags=flags), np.uint8)
    return np.frombuffer(mmap.mmap(-1, size), np.uint8)


def _invalid(path, kind, reason, buffer):
    """The one-line error for a file that is not a valid binary ``kind`` file."""
    head = buffer[:256].tobytes()
    looks_like_text = all(32 <= b < 127 or b in b"\t\r\n" for b in head)
    hint = "; it looks like text, e.g. a prototxt: give it as the net definition instead" if looks_like_text else ""
    return NetspecError(f"{path}: not a valid .{kind} ({reason}){hint}")


# ------------------------------------------------------------------ writing

def write_caffemodel(path, net_param, weights):
    """Write ``net_param``'s layers with their blobs from ``weights`` as a binary
    ``.caffemodel`` (atomically: a temporary file, then a rename).

    V2 ``layer`` entries are written as V2 with blobs in ``shape`` form; a net
    that only has V1 ``layers`` is written as V1.  Layers without an entry in
    ``weights`` get no blobs.  With ``net_param=None`` every entry of ``weights``
    becomes a layer holding just its name and blobs."""
    weights = {name: [_as_float32(a, name, i) for i, a in enumerate(arrays)]
               for name, arrays in (weights or {}).items()}
    if net_param is None:
        net_param = caffe_pb2.NetParameter()
        for name in weights:
            net_param.layer.add(name=name)
    known = {layer.name for layer in net_param.layer}
    known.update(layer.name or layer.layer.name for layer in net_param.layers)
    unknown = [name for name in weights if name not in known]
    if unknown:
        raise NetspecError(f"{path}: weights given for layer '{unknown[0]}', which the net does not have")
    _write_atomically(path, _caffemodel_pieces(net_param, weights))


def write_solverstate(path, iter, current_step, learned_net, history):
    """Write a binary ``.solverstate`` (atomically)."""
    arrays = [_as_float32(a, "history", i) for i, a in enumerate(history)]
    state = caffe_pb2.SolverState(iter=int(iter), current_step=int(current_step),
                                  learned_net=str(learned_net))

    def pieces():
        yield state.SerializeToString()
        for array in arrays:
            yield from wire.message_pieces(STATE_HISTORY, wire.blob_pieces(array))
    _write_atomically(path, pieces())


def _caffemodel_pieces(net_param, weights):
    top = caffe_pb2.NetParameter()
    top.CopyFrom(net_param)
    top.ClearField("layer")
    top.ClearField("layers")
    top.DiscardUnknownFields()
    yield top.SerializeToString()
    for layer in net_param.layers:
        yield from _layer_pieces(NET_LAYERS_V1, layer, V1_BLOBS, weights.get(layer.name or layer.layer.name, []))
    for layer in net_param.layer:
        yield from _layer_pieces(NET_LAYER, layer, LAYER_BLOBS, weights.get(layer.name, []))


def _layer_pieces(number, layer, blobs_field, arrays):
    body = [_serialize_without_blobs(layer)]
    for array in arrays:
        body += wire.message_pieces(blobs_field, wire.blob_pieces(array))
    return wire.message_pieces(number, body)


def _serialize_without_blobs(layer):
    """The layer's bytes without blobs and without unknown fields (which could be a
    fork's parameters at numbers BVLC reads as something else)."""
    nested_blobs = isinstance(layer, caffe_pb2.V1LayerParameter) and len(layer.layer.blobs)
    stripped = type(layer)()
    stripped.CopyFrom(layer)
    stripped.ClearField("blobs")
    if nested_blobs:
        stripped.layer.ClearField("blobs")
    stripped.DiscardUnknownFields()
    return stripped.SerializeToString()


def _as_float32(array, layer_name, index):
    if isinstance(array, Blob):
        array = array.data
    try:
        return np.asarray(array, dtype=np.float32, order='C')
    except (TypeError, ValueError) as e:
        raise NetspecError(f"weights of layer '{layer_name}', blob {index}: not a numeric array ({e})") from None


def _write_atomically(path, pieces):
    """Write the buffers of ``pieces`` to a temporary file next to ``path``, fsync it,
    rename it over ``path``, then fsync the directory: once this returns, ``path`` is
    complete and durable, and a reader never sees it half-written.  On any failure
    (ENOSPC, ...) the temporary file is removed and the old ``path`` is left as it was.

    The temporary file is ``.<name>.<pid>-<random>.tmp``: a writer killed mid-write
    leaves it behind, and ``netspec.snapshots.remove_stale_temp_files`` knows from the
    pid that its writer is gone."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}-{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                for piece in pieces:
                    f.write(piece)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            _remove_quietly(temp)
            raise
    except OSError as e:
        raise NetspecError(f"{path}: cannot write ({e.strerror or e})") from None
    _fsync_directory(directory)


def _remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _format_shape(shape):
    return "(" + ", ".join(str(d) for d in shape) + ")"


# ------------------------------------------------------------------ loading rule

def match_blob_shape(array, target_shape, where):
    """Fit a stored blob to the net's blob shape by Caffe's loading rule.

    Equal shapes match.  A 4-D array (legacy num/channels/height/width blobs
    read from a file are 4-D) also matches a target of at most 4 axes that,
    left-padded with 1s, equals it: 1x1xMxN fits MxN.  (Caffe allows that only
    for legacy blobs; here any 4-D array qualifies.)  Returns the array,
    reshaped when needed; otherwise raises ``NetspecError``."""
    target = tuple(int(d) for d in target_shape)
    shape = tuple(np.shape(array))
    if shape == target:
        return array
    if len(shape) == 4 and len(target) <= 4 and (1,) * (4 - len(target)) + target == shape:
        return np.reshape(array, target)
    raise NetspecError(f"{where}: blob shape {_format_shape(shape)} does not match the net's "
                       f"{_format_shape(target)} (rename the layer to leave it out of weight loading)")

"""Protocol-buffer wire format, just enough to move Caffe's blobs fast.

The stock protobuf API turns every float of a weight file into a Python-visible
repeated-field element, which is far too slow for VGG-sized nets.  This module
walks the wire format itself: it reads varints and field keys over one buffer
holding the whole file, hands the blob payloads out as NumPy arrays that are
views into that buffer (no copy), and encodes blobs back into wire pieces that
can be written to a file one after another.

Decoding errors raise ``WireError`` with the byte offset; callers turn it into
a ``NetspecError`` naming the file.
"""
import ctypes
from typing import NamedTuple

import numpy as np

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

# BlobProto field numbers (BVLC caffe.proto).
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_DIFF, BLOB_SHAPE, BLOB_DOUBLE_DATA, BLOB_DOUBLE_DIFF = 5, 6, 7, 8, 9
SHAPE_DIM = 1  # BlobShape.dim

_LEGACY_DIMS = (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH)


class WireError(Exception):
    """Malformed wire data at byte ``offset`` of the buffer being decoded."""

    def __init__(self, offset, reason):
        super().__init__(f"{reason} at byte {offset}")
        self.offset = offset
        self.reason = reason


class Field(NamedTuple):
    """One decoded field: ``value`` is an int for varints, the payload's
    ``(start, end)`` for length-delimited fields and the payload's start offset
    for fixed32/fixed64.  ``start``/``end`` span the whole field, key included."""
    number: int
    wire_type: int
    value: object
    start: int
    end: int


# ---------------------------------------------------------------- decoding

def read_varint(buf, pos, end):
    """Decode the varint at ``buf[pos]``; return ``(value, next_pos)``."""
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise WireError(start, "truncated: varint runs past the end")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift >= 70:
            raise WireError(start, "varint longer than 10 bytes")
    if result >> 64:
        raise WireError(start, "varint overflows 64 bits")
    return result, pos


def as_signed64(value):
    """Interpret a decoded varint as a two's-complement int64 (int32 fields too)."""
    return value - (1 << 64) if value >= (1 << 63) else value


def read_field(buf, pos, end):
    """Decode the field starting at ``buf[pos]`` (which must lie before ``end``)."""
    key, payload = read_varint(buf, pos, end)
    number, wire_type = key >> 3, key & 7
    if number == 0:
        raise WireError(pos, "field number 0")
    if wire_type == VARINT:
        value, next_pos = read_varint(buf, payload, end)
    elif wire_type == LENGTH:
        length, data_start = read_varint(buf, payload, end)
        next_pos = data_start + length
        if next_pos > end:
            raise WireError(data_start, f"truncated: field {number} claims {length} bytes, past the end")
        value = (data_start, next_pos)
    elif wire_type in (FIXED32, FIXED64):
        next_pos = payload + (4 if wire_type == FIXED32 else 8)
        if next_pos > end:
            raise WireError(payload, f"truncated: fixed-width field {number} runs past the end")
        value = payload
    else:
        raise WireError(pos, f"unsupported wire type {wire_type} (field {number})")
    return Field(number, wire_type, value, pos, next_pos)


def iter_fields(buf, start, end):
    """Yield the fields of the message stored in ``buf[start:end]``."""
    pos = start
    while pos < end:
        field = read_field(buf, pos, end)
        yield field
        pos = field.end


def expect_length_delimited(field, what):
    if field.wire_type != LENGTH:
        raise WireError(field.start, f"{what} (field {field.number}) has wire type {field.wire_type}, not a message")


def _packed_varints(buf, start, end):
    values = []
    pos = start
    while pos < end:
        value, pos = read_varint(buf, pos, end)
        values.append(as_signed64(value))
    return values


class BlobContents(NamedTuple):
    """A decoded BlobProto: flat float32 values, their shape, and whether the shape
    came from the legacy num/channels/height/width fields."""
    values: np.ndarray
    shape: tuple
    legacy: bool


class BlobDecoder:
    """Decodes BlobProto messages out of one writable buffer.

    The single packed ``data`` payload of a blob (the normal case) is returned
    as a float32 view into the buffer.  Payloads at offsets that are not
    4-aligned are first moved back by 1-3 bytes in place, over the blob's own
    already-decoded key/length bytes, so that the view is aligned.  The caller
    must not need the blob's own bytes (key and length included) after decoding
    it.  Every array keeps the whole buffer alive.
    """

    def __init__(self, buffer):
        self.buffer = buffer                      # writable uint8 array or bytearray
        self.view = memoryview(buffer)
        self.base_address = np.frombuffer(buffer, np.uint8).ctypes.data if len(self.view) else 0
        self.claimed_end = 0                      # end of the last region handed out as a view

    def decode(self, start, end):
        """Decode the BlobProto in ``buffer[start:end]``."""
        buf = self.view
        legacy_dims = {}
        shape_dims = None
        float_chunks = []    # (start, end) of packed float payloads, or arrays from unpacked runs
        double_chunks = []
        pos = start
        while pos < end:
            lead = buf[pos]
            if lead == (BLOB_DATA << 3 | FIXED32):       # unpacked float run (legal, rare)
                values, pos = _unpacked_run(buf, pos, end, lead, '<f4')
                float_chunks.append(values)
                continue
            if lead == (BLOB_DOUBLE_DATA << 3 | FIXED64):
                values, pos = _unpacked_run(buf, pos, end, lead, '<f8')
                double_chunks.append(values)
                continue
            field = read_field(buf, pos, end)
            pos = field.end
            number, wire_type = field.number, field.wire_type
            if number in _LEGACY_DIMS and wire_type == VARINT:
                legacy_dims[number] = as_signed64(field.value)
            elif number == BLOB_SHAPE and wire_type == LENGTH:
                shape_dims = (shape_dims or []) + self._shape_dims(*field.value)
            elif number == BLOB_DATA and wire_type == LENGTH:
                _check_multiple(field, 4)
                float_chunks.append(field.value)
            elif number == BLOB_DOUBLE_DATA and wire_type == LENGTH:
                _check_multiple(field, 8)
                double_chunks.append(field.value)
            elif number in (BLOB_DIFF, BLOB_DOUBLE_DIFF) or number > BLOB_DOUBLE_DIFF:
                continue                                 # gradients and unknown fields are skipped
            else:
                raise WireError(field.start, f"blob field {number} has wrong wire type {wire_type}")
        if legacy_dims:
            shape = tuple(legacy_dims.get(n, 0) for n in _LEGACY_DIMS)
        else:
            shape = tuple(shape_dims or ())
        if double_chunks:   # Caffe prefers double_data when present
            values = np.concatenate([self._doubles(c) for c in double_chunks]).astype(np.float32)
        else:
            values = self._floats(float_chunks, start)
        return BlobContents(values, shape, bool(legacy_dims))

    def _shape_dims(self, start, end):
        dims = []
        for field in iter_fields(self.view, start, end):
            if field.number != SHAPE_DIM:
                continue
            if field.wire_type == LENGTH:
                dims.extend(_packed_varints(self.view, *field.value))
            elif field.wire_type == VARINT:
                dims.append(as_signed64(field.value))
            else:
                raise WireError(field.start, f"shape dim has wrong wire type {field.wire_type}")
        return dims

    def _floats(self, chunks, body_start):
        if not chunks:
            return np.zeros(0, np.float32)
        if len(chunks) == 1 and isinstance(chunks[0], tuple):
            return self._aligned_view(*chunks[0], body_start)
        parts = [c if isinstance(c, np.ndarray) else
                 np.frombuffer(self.buffer, '<f4', (c[1] - c[0]) // 4, c[0]) for c in chunks]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _doubles(self, chunk):
        if isinstance(chunk, np.ndarray):
            return chunk
        start, end = chunk
        return np.frombuffer(self.buffer, '<f8', (end - start) // 8, start)

    def _aligned_view(self, start, end, body_start):
        """A float32 view of the payload ``buffer[start:end]``, 4-byte aligned.

        The payload may move back over bytes already decoded: the blob's own
        key and length (2+ bytes before ``body_start``) and the blob's fields
        before the payload (the data key and length at least), but never over
        an array handed out earlier."""
        count = (end - start) // 4
        shift = (self.base_address + start) % 4
        if shift and start - shift >= max(self.claimed_end, body_start - 2):
            ctypes.memmove(self.base_address + start - shift, self.base_address + start, end - start)
            start -= shift
            shift = 0
        if shift:   # cannot move it safely: copy
            return np.frombuffer(self.buffer, '<f4', count, start).astype(np.float32)
        self.claimed_end = max(self.claimed_end, start + 4 * count)
        return np.frombuffer(self.buffer, '<f4', count, start).astype(np.float32, copy=False)


def _check_multiple(field, width):
    start, end = field.value
    if (end - start) % width:
        raise WireError(start, f"packed field {field.number} of {end - start} bytes is not a multiple of {width}")


def _unpacked_run(buf, pos, end, key_byte, dtype):
    """Decode consecutive unpacked fixed-width values sharing the one-byte key
    ``key_byte`` starting at ``pos``; return ``(values, next_pos)``."""
    width = np.dtype(dtype).itemsize
    stride = 1 + width
    pieces = []
    chunk_rows = 64
    while True:
        rows_left = (end - pos) // stride
        rows = min(rows_left, chunk_rows)
        if rows == 0:
            break
        table = np.frombuffer(buf, np.uint8, rows * stride, pos).reshape(rows, stride)
        same_key = table[:, 0] == key_byte
        run = rows if same_key.all() else int(np.argmin(same_key))
        pieces.append(table[:run, 1:].copy().view(dtype).reshape(-1))
        pos += run * stride
        if run < rows:
            break
        chunk_rows *= 2
    if not pieces or sum(p.size for p in pieces) == 0:
        raise WireError(pos, "truncated: fixed-width value runs past the end")
    return np.concatenate(pieces), pos


# ---------------------------------------------------------------- encoding

def encode_varint(value):
    """The varint bytes of a non-negative int, or of a negative int64 (10 bytes)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_key(number, wire_type):
    return encode_varint(number << 3 | wire_type)


def length_header(number, length):
    """Key and length prefix of a length-delimited field with ``length`` payload bytes."""
    return encode_key(number, LENGTH) + encode_varint(length)


def blob_pieces(array):
    """The BlobProto body of a float32 ``array`` (data, then shape) as a list of
    buffers to be written one after another; the data buffer is the array's own
    memory, not a copy."""
    array = np.asarray(array, dtype='<f4', order='C')   # keeps 0-d arrays 0-d
    pieces = []
    if array.size:
        pieces.append(length_header(BLOB_DATA, array.nbytes))
        pieces.append(array.reshape(-1).view(np.uint8))
    dims = b"".join(encode_varint(int(d)) for d in array.shape)
    shape_body = length_header(SHAPE_DIM, len(dims)) + dims if dims else b""
    pieces.append(length_header(BLOB_SHAPE, len(shape_body)) + shape_body)
    return pieces


def message_pieces(number, body_pieces):
    """Wrap ``body_pieces`` as the length-delimited field ``number``."""
    length = sum(memoryview(p).nbytes for p in body_pieces)
    return [length_header(number, length)] + list(body_pieces)

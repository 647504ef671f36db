"""``netspec compute-image-mean [--backend lmdb|leveldb] DB [MEAN.binaryproto]``: Caffe's
``compute_image_mean``.  The mean of every Datum (encoded ones decoded natively),
accumulated in float32 in key order, written as a BlobProto with the legacy
num=1/channels/height/width fields (no ``shape``), as Caffe's tool writes it; the
per-channel means are printed.  The output file is written atomically."""
import os
import sys

from ..errors import NetspecError


def add_arguments(p):
    p.add_argument("--backend", default="lmdb", choices=("lmdb", "leveldb"), help="database format (lmdb)")
    p.add_argument("db", metavar="DB", help="an LMDB/LevelDB of Datums")
    p.add_argument("output", metavar="MEAN.binaryproto", nargs="?", help="where to write the mean")


def compute_mean(path, backend):
    """``(sum / count as float32 (C, H, W), count)`` over the database's Datums."""
    import numpy as np
    from ..caffe_data import datum as datum_io
    from ..caffe_data.db import open_reader

    reader = open_reader(path, backend, "compute-image-mean")
    total, shape, count = None, None, 0
    try:
        for _, value in reader:
            where = reader.where()
            array = datum_io.datum_array(datum_io.parse_datum(value, where), where)
            if total is None:
                shape = array.shape
                total = np.zeros(shape, np.float32)
            elif array.size != total.size:
                raise NetspecError(f"{where}: Datum has {array.size} values, the first {total.size} "
                                   f"({'x'.join(map(str, shape))}); all images must have the same size")
            total += array.reshape(shape).astype(np.float32)
            count += 1
    finally:
        reader.close()
    return total / np.float32(count), count


def run(args):
    import numpy as np
    from ..proto import caffe_pb2

    mean, count = compute_mean(args.db, args.backend)
    c, h, w = mean.shape
    print(f"Processed {count} files.", file=sys.stderr)
    if args.output:
        blob = caffe_pb2.BlobProto(num=1, channels=c, height=h, width=w)
        blob.data.extend(mean.ravel().tolist())
        _write_atomically(args.output, blob.SerializeToString())
        print(f"Write to {args.output}", file=sys.stderr)
    print(f"Number of channels: {c}")
    flat = mean.reshape(c, h * w)
    for i in range(c):
        total = np.cumsum(flat[i], dtype=np.float32)[-1]     # Caffe adds them in order, in float
        print(f"mean_value channel [{i}]: {float(np.float32(total) / np.float32(h * w)):g}")
    return 0


def _write_atomically(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise NetspecError(f"cannot write {path}: {e.strerror or e}") from None

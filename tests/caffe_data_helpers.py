"""Generated images, image lists and databases for the tests of Caffe's data layers."""
import os

import numpy as np
from PIL import Image


def write_images(root, count, size=(28, 28), color=False, classes=10, seed=0, ext="png"):
    """``count`` PNG images with a class-dependent pattern (a bright bar whose row/column
    depends on the class, plus noise) under ``root``; returns ``[(relative path, label)]``."""
    rng = np.random.RandomState(seed)
    h, w = size
    os.makedirs(root, exist_ok=True)
    entries = []
    for i in range(count):
        label = i % classes
        base = rng.randint(0, 60, size=(h, w, 3) if color else (h, w)).astype(np.uint8)
        rows = slice(label * h // classes, (label + 1) * h // classes + 1)
        base[rows] = 200 + rng.randint(0, 55)
        if color:
            base[..., label % 3] //= 2
        name = f"img_{i:03d}.{ext}"
        Image.fromarray(base).save(os.path.join(root, name))
        entries.append((name, label))
    return entries


def write_list(path, entries):
    with open(path, "w") as f:
        for name, label in entries:
            f.write(f"{name} {label}\n")
    return path


def read_bgr(path, gray=False):
    """An image as OpenCV reads it, computed with PIL: (H, W, 3) BGR or (H, W, 1) grey (PNG only)."""
    with Image.open(path) as im:
        if gray:
            return np.array(im.convert("L"))[:, :, None]
        return np.array(im.convert("RGB"))[:, :, ::-1]


def write_lmdb(path, records):
    """An LMDB of ``{key: bytes}`` in the given order, written with ``lmdb`` directly."""
    import lmdb
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in records:
            txn.put(key.encode() if isinstance(key, str) else key, value)
    env.close()
    return str(path)


def raw_datum(chw, label):
    from netspec.proto import caffe_pb2
    chw = np.asarray(chw)
    d = caffe_pb2.Datum(channels=chw.shape[0], height=chw.shape[1], width=chw.shape[2], label=label)
    if chw.dtype == np.uint8:
        d.data = chw.tobytes()
    else:
        d.float_data.extend(chw.ravel().tolist())
    return d

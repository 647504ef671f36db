"""``netspec convert-imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME``: Caffe's
``convert_imageset``.  Each "path label" line of LISTFILE becomes a Datum (the image
ROOTFOLDER + path read with OpenCV, BGR or grey, optionally resized; raw CHW bytes,
or encoded with --encoded) stored under the key ``"%08d_%s" % (line index, path)``,
in transactions of 1000 records, in a new LMDB or LevelDB.  An existing DB_NAME is
refused; the database is written beside it under a temporary name and renamed when
complete.  Unreadable images are skipped with a warning, as Caffe does."""
import sys

from ..errors import NetspecError

COMMIT_EVERY = 1000


def add_arguments(p):
    p.add_argument("--gray", action="store_true", help="read the images as greyscale")
    p.add_argument("--shuffle", action="store_true", help="shuffle the order of the lines (seeded: --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default 0)")
    p.add_argument("--backend", default="lmdb", choices=("lmdb", "leveldb"), help="database format (lmdb)")
    p.add_argument("--resize-width", "--resize_width", dest="resize_width", type=int, default=0)
    p.add_argument("--resize-height", "--resize_height", dest="resize_height", type=int, default=0)
    p.add_argument("--check-size", "--check_size", dest="check_size", action="store_true",
                   help="check that all the Datums have the same size")
    p.add_argument("--encoded", action="store_true", help="store the encoded image in the Datum")
    p.add_argument("--encode-type", "--encode_type", dest="encode_type", default="",
                   help="encode as this type (png, jpg); implies --encoded")
    p.add_argument("root_folder", metavar="ROOTFOLDER", help="prefix of every path in the list (string concatenation)")
    p.add_argument("list_file", metavar="LISTFILE", help='one "path label" per line')
    p.add_argument("db_name", metavar="DB_NAME", help="the database to create")


def run(args):
    import numpy as np
    from ..caffe_data import datum as datum_io
    from ..caffe_data.db import create_writer

    is_color = not args.gray
    lines = datum_io.read_image_list(args.list_file, "convert-imageset")
    if args.shuffle:
        order = np.random.default_rng(args.seed).permutation(len(lines))
        lines = [lines[i] for i in order]
    print(f"A total of {len(lines)} images.", file=sys.stderr)
    encoded = args.encoded or bool(args.encode_type)
    resize_height, resize_width = max(0, args.resize_height), max(0, args.resize_width)
    writer = create_writer(args.db_name, args.backend)
    count, data_size = 0, None
    try:
        for line_id, (name, label, number) in enumerate(lines):
            encoding = args.encode_type.lower()
            if encoded and not encoding:
                dot = name.rfind(".")
                if dot < 0:
                    print(f"warning: failed to guess the encoding of '{name}'", file=sys.stderr)
                encoding = name[dot + 1:].lower()
            datum = datum_io.read_image_to_datum(args.root_folder + name, label, resize_height, resize_width,
                                                 is_color, encoding)
            if datum is None:
                print(f"warning: could not open or find file {args.root_folder + name} "
                      f"({args.list_file}:{number}); skipped", file=sys.stderr)
                continue
            if args.check_size:
                if data_size is None:
                    data_size = datum.channels * datum.height * datum.width
                elif len(datum.data) != data_size:
                    raise NetspecError(f"{args.list_file}:{number}: {name} gives {len(datum.data)} values, the "
                                       f"first image {data_size} (--check-size); resize the images "
                                       "(--resize-width/--resize-height)")
            writer.put("%08d_%s" % (line_id, name), datum.SerializeToString())
            count += 1
            if count % COMMIT_EVERY == 0:
                writer.commit()
                print(f"Processed {count} files.", file=sys.stderr)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    print(f"Processed {count} files.", file=sys.stderr)
    return 0

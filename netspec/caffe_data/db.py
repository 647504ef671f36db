"""Caffe's key-value databases (``caffe/util/db_lmdb.cpp``, ``db_leveldb.cpp``).

``open_reader(path, backend, who)`` gives a cursor over the records in key order (the
order Caffe's cursor walks them) that wraps around to the first record at the end,
as ``DataLayer::Next`` does.  ``create_writer(path, backend)`` makes a new database
the way Caffe's ``db::NEW`` mode does (an existing one is refused); it is written in a
temporary directory beside ``path`` and renamed into place when complete, so a failed
conversion never leaves a half-written database under the final name.
"""
import os
import secrets
import shutil
import threading

from ..errors import NetspecError

BACKENDS = ("lmdb", "leveldb")
_LMDB_INITIAL_MAP = 1 << 24       # grown by doubling on MDB_MAP_FULL, as Caffe's LMDBTransaction does


def backend_name(backend):
    """``lmdb``/``leveldb`` from a name or DataParameter.DB value (LEVELDB = 0, LMDB = 1)."""
    if isinstance(backend, int):
        return "leveldb" if backend == 0 else "lmdb"
    name = str(backend).lower()
    if name not in BACKENDS:
        raise NetspecError(f'unknown database backend "{backend}"; use lmdb or leveldb')
    return name


def _plyvel(path):
    try:
        import plyvel
    except ImportError:
        raise NetspecError(f"{path}: LevelDB databases need plyvel (pip install plyvel), or convert the "
                           "images to LMDB with netspec convert-imageset --backend lmdb") from None
    return plyvel


_LMDB_ENVS = {}            # one read-only environment per database and process (LMDB allows no more)
_LMDB_LOCK = threading.Lock()


def _lmdb_env(path, who):
    import lmdb
    key = os.path.realpath(path)
    with _LMDB_LOCK:
        env = _LMDB_ENVS.get(key)
        if env is None:
            try:
                env = lmdb.open(path, readonly=True, lock=False, readahead=False, max_readers=126, subdir=True)
            except lmdb.Error as e:
                raise NetspecError(f"{who}: {path} is not an LMDB database ({e}); is backend "
                                   "LEVELDB meant?") from None
            _LMDB_ENVS[key] = env
        return env


class Reader:
    """Records of one database in key order, wrapping around at the end."""

    def __init__(self, path, backend, who):
        self.path, self.backend, self.who = os.fspath(path), backend_name(backend), who
        if not os.path.isdir(self.path):
            raise NetspecError(f"{who}: database {self.path} does not exist; create it with "
                               f"netspec convert-imageset (backend {self.backend})")
        if self.backend == "lmdb":
            self._env = _lmdb_env(self.path, who)
            self._txn = self._env.begin(buffers=False)
            self._cursor = self._txn.cursor()
            valid = self._cursor.first()
        else:
            if os.path.exists(os.path.join(self.path, "data.mdb")):
                raise NetspecError(f"{who}: {self.path} is an LMDB database but the backend is LevelDB "
                                   "(Caffe's default); set data_param { backend: LMDB }")
            plyvel = _plyvel(self.path)
            try:
                self._db = plyvel.DB(self.path, create_if_missing=False)
            except Exception as e:
                raise NetspecError(f"{who}: {self.path} is not a LevelDB database "
                                   f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                                   "is backend LMDB meant?") from None
            self._iter = None
            valid = self._leveldb_first()
        if not valid:
            raise NetspecError(f"{who}: database {self.path} is empty")

    def _leveldb_first(self):
        self._iter = self._db.iterator()
        self._item = next(self._iter, None)
        return self._item is not None

    def key(self):
        return self._cursor.key() if self.backend == "lmdb" else self._item[0]

    def value(self):
        return self._cursor.value() if self.backend == "lmdb" else self._item[1]

    def where(self):
        """``path, key "..."`` of the current record, for error messages."""
        key = self.key()
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError:
            text = key.hex()
        return f'{self.path}, key "{text}"'

    def next(self):
        """Advance; wrap to the first record after the last.  True when it wrapped."""
        if self.backend == "lmdb":
            if self._cursor.next():
                return False
            self._cursor.first()
            return True
        self._item = next(self._iter, None)
        if self._item is not None:
            return False
        self._leveldb_first()
        return True

    def __iter__(self):
        """One pass over the records from the first: ``(key, value)``."""
        while True:
            yield self.key(), self.value()
            if self.next():
                return

    def close(self):
        if self.backend == "lmdb":
            self._txn.abort()
        else:
            self._db.close()


def open_reader(path, backend, who):
    return Reader(path, backend, who)


class Writer:
    """A new database, written in transactions of ``put``s (``commit()`` ends one) into a
    temporary directory and renamed to ``path`` by ``close()``; ``abort()`` removes it."""

    def __init__(self, path, backend):
        self.path, self.backend = os.fspath(path), backend_name(backend)
        if os.path.lexists(self.path):
            raise NetspecError(f"{self.path} already exists; Caffe's tools never overwrite a database: "
                               "remove it or choose another name")
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise NetspecError(f"{self.path}: directory {parent} does not exist")
        self._tmp = os.path.join(parent, f".{os.path.basename(self.path)}.tmp-{secrets.token_hex(4)}")
        self._pending = []
        if self.backend == "lmdb":
            import lmdb
            os.mkdir(self._tmp, 0o744)
            self._map_size = _LMDB_INITIAL_MAP
            self._env = lmdb.open(self._tmp, map_size=self._map_size, subdir=True)
        else:
            plyvel = _plyvel(self.path)
            self._db = plyvel.DB(self._tmp, create_if_missing=True, error_if_exists=True,
                                 block_size=65536, write_buffer_size=268435456, max_open_files=100)

    def put(self, key, value):
        self._pending.append((key.encode("utf-8") if isinstance(key, str) else bytes(key), bytes(value)))

    def commit(self):
        if self.backend == "lmdb":
            import lmdb
            while True:
                try:
                    with self._env.begin(write=True) as txn:
                        for key, value in self._pending:
                            txn.put(key, value)
                    break
                except lmdb.MapFullError:
                    self._map_size *= 2
                    self._env.set_mapsize(self._map_size)
        else:
            with self._db.write_batch(sync=False) as batch:
                for key, value in self._pending:
                    batch.put(key, value)
        self._pending = []

    def close(self):
        """Commit what is pending and move the database into place."""
        self.commit()
        if self.backend == "lmdb":
            self._env.sync(True)
            self._env.close()
        else:
            self._db.close()
        if os.path.lexists(self.path):
            self.abort()
            raise NetspecError(f"{self.path} appeared while it was being written; the new database "
                               "was discarded")
        os.rename(self._tmp, self.path)

    def abort(self):
        try:
            if self.backend == "lmdb":
                self._env.close()
            else:
                self._db.close()
        except Exception:
            pass
        shutil.rmtree(self._tmp, ignore_errors=True)


def create_writer(path, backend):
    return Writer(path, backend)

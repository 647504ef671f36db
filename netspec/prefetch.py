"""A net's host data layers (Python layers without bottoms), optionally run ahead on a thread.

Each pass of a net needs one batch from its data layers: every layer's ``reshape``
then ``forward``, in layer order, on host blobs.  ``HostDataLayers.next()`` gives that
batch as ``{top: array}``.  Started (``start()``), a background thread produces the
batches ahead into a small bounded queue, so image decoding and mean subtraction
overlap the device's step; batches come out in exactly the order they would without
the thread (one producer, first in first out), and a data layer's exception is
raised in the thread that asks for the batch, as a ``NetspecError`` naming the layer
and the file and line where it was raised.

Layers run on private blobs; the net copies each batch into its own ``net.blobs``.
While the thread runs, nothing else may call the layer objects.

In multi-process training a TRAIN net's batch is this process's slice of the global
batch (``_process_slice``, ``netspec.distributed``).
"""
import queue
import threading
import traceback

from .blob import Blob
from .distributed import data_slice, slice_rows
from .errors import NetspecError

DEFAULT_DEPTH = 3


class HostDataLayers:
    """``layers``: ``[(layer name, Python layer object, [top names])]``, in net order."""

    def __init__(self, layers, depth=DEFAULT_DEPTH):
        self.layers = list(layers)
        self.depth = max(1, int(depth))
        self._blobs = {t: Blob() for _, _, tops in self.layers for t in tops}
        self._queue = None
        self._thread = None
        self._stop = threading.Event()
        self._pending = []          # batches produced ahead and not taken when the thread stopped

    def __bool__(self):
        return bool(self.layers)

    @property
    def running(self):
        return self._thread is not None

    def run_once(self):
        """One batch, computed here and now: ``{top: array}`` (fresh arrays)."""
        for name, obj, tops in self.layers:
            top_blobs = [self._blobs[t] for t in tops]
            try:
                obj.reshape([], top_blobs)
                obj.forward([], top_blobs)
            except NetspecError:
                raise
            except Exception as e:
                raise NetspecError(_describe_failure(name, obj, e)) from e
        batch = {t: blob.data.copy() for t, blob in self._blobs.items()}
        return self._process_slice(batch)

    def _process_slice(self, batch):
        """Multi-process training (``netspec.distributed``): a TRAIN net's process ``i`` of
        ``P`` keeps rows ``[i*N/P, (i+1)*N/P)`` of the tops of layers that produced the
        whole batch; layers with ``produces_process_slice`` set made only those rows."""
        for name, obj, tops in self.layers:
            if getattr(obj, "produces_process_slice", False):
                continue
            index, count = data_slice(getattr(obj, "phase", 0))
            if count <= 1:
                continue
            for t in tops:
                lo, hi = slice_rows(batch[t].shape[0] if batch[t].ndim else 0, index, count,
                                    f'data layer "{name}", top "{t}"')
                batch[t] = batch[t][lo:hi]
        return batch

    def start(self):
        """Produce batches ahead on a background thread (no-op without layers or if running)."""
        if not self.layers or self._thread is not None:
            return
        self._queue = queue.Queue(maxsize=self.depth)
        self._stop.clear()
        self._thread = threading.Thread(target=self._produce, name="netspec-data", daemon=True)
        self._thread.start()

    def _produce(self):
        while not self._stop.is_set():
            try:
                item = (self.run_once(), None)
            except BaseException as e:    # handed to the consumer, which raises it
                item = (None, e)
            while True:
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    if self._stop.is_set():
                        self._pending_tail = item
                        return
            if item[1] is not None:
                return

    def next(self):
        """The next batch, from the thread if started, else computed now."""
        if self._pending:
            batch, error = self._pending.pop(0)
        elif self._thread is None:
            return self.run_once()
        else:
            batch, error = self._queue.get()
        if error is not None:
            self.close()
            raise error
        return batch

    def close(self):
        """Stop the thread.  Batches it produced ahead are kept and served first by
        ``next()``, so the sample order never changes."""
        if self._thread is None:
            return
        self._pending_tail = None
        self._stop.set()
        self._thread.join(timeout=60)
        self._thread = None
        while True:
            try:
                self._pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if self._pending_tail is not None:
            self._pending.append(self._pending_tail)
            self._pending_tail = None

    def restart(self):
        """Stop the thread and drop the batches it produced ahead (the data source changed:
        ``net.set_input_arrays``); later batches come from the layers' new state."""
        self.close()
        self._pending = []


def _describe_failure(name, obj, error):
    """One line: which layer failed, where, and how."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    cls = type(obj)
    message = str(error).splitlines()[0] if str(error) else ""
    return (f'data layer "{name}" ({cls.__module__}.{cls.__name__}) failed{where}: '
            f"{type(error).__name__}: {message}")

"""Training as ``caffe train`` does it: ``Solver`` (pycaffe's ``caffe.SGDSolver`` & co.).

The solver prototxt names a train net and test nets; the train net's learned blobs
are a params pytree updated by compiled steps, one per input-size bucket
(``netspec.buckets``): forward, backward and Caffe's update from ``netspec.optim`` in
one executable for ``iter_size`` 1, else one executable per pass accumulating the
gradient and one update.  Test nets share the train net's blobs, which keep the
params on the device between steps.  Logs follow Caffe's glog lines so Caffe's
log parsers work; snapshots are Caffe's binary ``.caffemodel`` + ``.solverstate``,
written atomically.

Per iteration, in Caffe's order: test (if ``iter % test_interval == 0``), forward/
backward ``iter_size`` times, display, update, ``iter += 1``, snapshot (if
``iter % snapshot == 0``).

The train net's layer state travels through the steps: BatchNorm's statistics and the
values LSTM/RNN layers carry from one pass to the next (their final h, c: Caffe's
truncated back-propagation through time over sequences split across batches; zeros
again when a pass has another batch size).  Test nets keep their own carried values.
"""
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import compiler, distributed, optim
from .errors import NetspecError
from .layers import TEST, TRAIN
from .lr_policy import learning_rate, snapshot_current_step
from .buckets import AUTO, describe_bucket
from .compilation import TOTALS, Executables
from .log import Log
from .net import Net

SIGNAL_EFFECTS = ("stop", "snapshot", "none")


def _resolve(path, base_dir):
    """A path from the solver file: as given (Caffe: relative to the working directory), else next to the solver."""
    if os.path.isabs(path) or os.path.exists(path) or base_dir is None:
        return path
    beside = os.path.join(base_dir, path)
    return beside if os.path.exists(beside) else path


def _g(value):
    """Caffe prints floats with C++ ostream's default 6 significant digits."""
    return f"{value:.6g}"


class Solver:
    """A solver prototxt ready to train: ``solver.step(n)``, ``solver.solve()``, ``solver.net``."""

    def __init__(self, solver, *, python_path=(), devices=None, log=None, weights=None, solver_type=None,
                 buckets=AUTO, precision="fp32"):
        from .prototxt import read_solver
        from .proto import caffe_pb2
        if isinstance(solver, caffe_pb2.SolverParameter):
            self.param, self.path, base = solver, "<SolverParameter>", None
        else:
            self.path = str(solver)
            self.param = read_solver(self.path)
            base = os.path.dirname(os.path.abspath(self.path))
        self._base = base
        if solver_type:
            self.param.ClearField("solver_type")
            self.param.type = solver_type
        self.log = log or Log()
        self.python_path = tuple(python_path) + ((base,) if base else ())
        self.type = optim.solver_type(self.param, self.path)
        seed = int(self.param.random_seed) if self.param.random_seed >= 0 else 0
        self._seed = seed
        self._buckets = buckets
        self.precision = precision
        self._options = compiler.precision_options(precision)
        self.net = self._make_train_net(seed)
        self.test_nets = self._make_test_nets(seed)
        self.iter = 0
        self._devices = list(devices) if devices else None
        self._mesh = None
        self._distributed = distributed.active()    # multi-process: netspec.distributed
        if self._distributed:
            self._mesh = distributed.global_mesh()
            self._devices = list(self._mesh.devices.flat)
        elif self._devices and len(self._devices) > 1:
            from jax.sharding import Mesh
            self._mesh = Mesh(np.array(self._devices), ("batch",))
        graph = self.net.graph
        self._order = list(graph.learnable)
        lr_mults, decay_mults = {}, {}
        for node in graph.nodes:
            for (owner, i), lr, decay in zip(node.param_keys, node.lr_mults, node.decay_mults):
                if owner == node.name:
                    lr_mults.setdefault(owner, []).append(lr)
                    decay_mults.setdefault(owner, []).append(decay)
        self._optimizer = optim.caffe_optimizer(self.param, lr_mults, decay_mults,
                                                force_backward=graph.force_backward, name=self.path)
        # fresh buffers per leaf: init may reuse one zeros array for several history sets,
        # and the jitted step donates the optimizer state
        self._opt_state = jax.tree.map(lambda x: jnp.array(x, copy=True),
                                       self._optimizer.init(self._device_params()))
        self._losses, self.smoothed_loss, self._start_iter = [], 0.0, 0
        self._executables = Executables(self.log)
        self._requested = None
        self._last_snapshot = None      # (caffemodel, solverstate) of the newest good snapshot
        self._snapshot_iter = None      # the iteration it holds
        self._temp_files_checked = False
        for path in list(self.param.weights) + ([weights] if isinstance(weights, str) else list(weights or [])):
            for p in path.split(","):
                self.net.copy_from(_resolve(p, base))

    # -- nets ---------------------------------------------------------------
    def _train_net_source(self):
        """The train net as Caffe's ``Solver::InitTrainNet`` finds it: exactly one of four fields."""
        p = self.param
        given = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if len(given) != 1:
            raise NetspecError(f"{self.path}: specify exactly one of net, net_param, train_net, "
                               f"train_net_param (found {', '.join(given) or 'none'})")
        field = given[0]
        value = getattr(p, field)
        return value if field.endswith("_param") else self._net_file(field, value)

    def _net_file(self, field, value):
        path = _resolve(value, self._base)
        if not os.path.exists(path):
            raise NetspecError(f'{self.path}: {field}: net file "{value}" does not exist')
        return path

    def _make_train_net(self, seed):
        s = self.param.train_state
        return Net(self._train_net_source(), phase=TRAIN, level=s.level, stages=tuple(s.stage),
                   python_path=self.python_path, seed=seed, buckets=self._buckets, log=self.log,
                   prefetch=True, precision=self.precision)

    def _make_test_nets(self, seed):
        p = self.param
        sources = [self._net_file("test_net", f) for f in p.test_net] + list(p.test_net_param)
        generic = p.HasField("net") or p.HasField("net_param")
        if generic:
            generic_source = p.net_param if p.HasField("net_param") else self._net_file("net", p.net)
            sources += [generic_source] * max(0, len(p.test_iter) - len(sources))
        if len(p.test_iter) != len(sources):
            if not sources and p.test_iter:
                raise NetspecError(f"{self.path}: test_iter is given but there is no test net "
                                   "(add test_net, or use net: for both phases)")
            raise NetspecError(f"{self.path}: test_iter must be given once per test net "
                               f"({len(sources)} test nets, {len(p.test_iter)} test_iter values)")
        if p.test_state and len(p.test_state) != len(sources):
            raise NetspecError(f"{self.path}: test_state must be given once per test net")
        nets = []
        for i, source in enumerate(sources):
            state = p.test_state[i] if p.test_state else None
            net = Net(source, phase=TEST, level=state.level if state else 0,
                      stages=tuple(state.stage) if state else (), python_path=self.python_path, seed=seed,
                      buckets=self._buckets, log=self.log, prefetch=True, precision=self.precision)
            net.share_with(self.net)
            nets.append(net)
        return nets

    # -- device state -------------------------------------------------------
    def _replicated(self, tree):
        if self._mesh is None:
            return jax.tree.map(jnp.asarray, tree)
        if self._distributed:
            return distributed.replicate(self._mesh, tree)
        from jax.sharding import NamedSharding, PartitionSpec
        return jax.device_put(tree, NamedSharding(self._mesh, PartitionSpec()))

    def _batch_sharded(self, tree, batch_axis):
        if self._mesh is None:
            return tree
        if self._distributed:       # this process's rows of the global batch
            return distributed.global_batch(self._mesh, tree)
        from jax.sharding import NamedSharding, PartitionSpec
        n = len(self._devices)

        def put(x):
            x = np.asarray(x)
            if x.ndim > batch_axis and x.shape[batch_axis] % n == 0:
                spec = PartitionSpec(*([None] * batch_axis + ["batch"]))
            else:
                spec = PartitionSpec()
            return jax.device_put(x, NamedSharding(self._mesh, spec))
        return jax.tree.map(put, tree)

    def _device_params(self):
        return self._replicated(self.net.param_tree())

    # -- the jitted step ----------------------------------------------------
    def _loss_and_grad(self, plan):
        graph = plan.graph
        keep = tuple(shown_blobs(graph))

        def loss_fn(params, state, inputs, extents, rng):
            blobs, loss, new_state = compiler.forward(graph, params, state, inputs, train=True, rng=rng, keep=keep,
                                                      extents=plan.unpack_extents(extents), **self._options)
            return loss, (blobs, new_state)
        return jax.value_and_grad(loss_fn, has_aux=True)

    def _apply(self, params, opt_state, grads):
        updates, opt_state = self._optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def _what(self, kind, plan):
        return f'{kind} of net "{self.net.label}", bucket {describe_bucket(plan)}'

    def _step_fn(self, plan, args):
        """Forward, backward and update in one executable (iter_size 1), per bucket.

        There is deliberately no ``lax.scan`` over passes: inside XLA's CPU while loop
        the same forward/backward ran 2.3x slower than called directly."""
        def make():
            grad_fn = self._loss_and_grad(plan)

            def step(params, state, opt_state, inputs, extents, rng):
                (loss, (blobs, state)), grads = grad_fn(params, state, inputs, extents, rng)
                params, opt_state = self._apply(params, opt_state, grads)
                return params, state, opt_state, loss, blobs
            return jax.jit(step, donate_argnums=(0, 2))
        return self._executables.get(("step", id(plan.graph), plan.padded), make, args,
                                     self._what("train step", plan))

    def _accumulate_fn(self, plan, args):
        """One forward/backward adding its gradient into ``grads`` (iter_size > 1), per bucket."""
        def make():
            grad_fn = self._loss_and_grad(plan)

            def accumulate(params, state, grads, inputs, extents, rng):
                (loss, (blobs, state)), g = grad_fn(params, state, inputs, extents, rng)
                return state, jax.tree.map(jnp.add, grads, g), loss, blobs
            return jax.jit(accumulate, donate_argnums=(2,))
        return self._executables.get(("accumulate", id(plan.graph), plan.padded), make, args,
                                     self._what("forward/backward pass", plan))

    def _apply_fn(self, args):
        return self._executables.get(("apply",), lambda: jax.jit(self._apply, donate_argnums=(0, 1)),
                                     args, f'update of net "{self.net.label}"')

    def _next_batches(self):
        """Run the host data layers ``iter_size`` times; the input values of each pass."""
        return [self.net.next_inputs() for _ in range(max(1, int(self.param.iter_size)))]

    def _fit_state(self, graph, state):
        """``state`` for a pass of ``graph``: carried values of another shape (a batch
        size change) become zeros, as Caffe's recurrent layers restart after a reshape."""
        if not graph.carried_shapes:
            return state
        return self._replicated(compiler.join_state(graph, *compiler.split_state(graph, state)))

    def _run_iteration(self, params, state, batches, rng):
        """One Caffe iteration on device; returns (params, state, loss, outputs, plan).
        Each pass runs in the executable of its input sizes' bucket (``netspec.buckets``)."""
        plans = [self._plan_for(b) for b in batches]
        if len(batches) == 1:
            plan = plans[0]
            state = self._fit_state(plan.graph, state)
            args = (params, state, self._opt_state, self._batch_sharded(self._pad(plan, batches[0]), 0),
                    self._replicated(plan.extents), jax.random.fold_in(rng, 0))
            params, state, self._opt_state, loss, outputs = self._step_fn(plan, args)(*args)
            return params, state, loss, outputs, plan
        grads = jax.tree.map(jnp.zeros_like, params)
        loss_sum = 0.0
        for i, (plan, batch) in enumerate(zip(plans, batches)):
            state = self._fit_state(plan.graph, state)
            args = (params, state, grads, self._batch_sharded(self._pad(plan, batch), 0),
                    self._replicated(plan.extents), jax.random.fold_in(rng, i))
            state, grads, loss, outputs = self._accumulate_fn(plan, args)(*args)
            loss_sum = loss_sum + loss
        args = (params, self._opt_state, grads)
        params, self._opt_state = self._apply_fn(args)(*args)
        return params, state, loss_sum / len(batches), outputs, plan

    def _plan_for(self, batch):
        """The plan of a pass; multi-process: of the global batch this process holds a slice of."""
        if self._distributed:
            return self.net._plan_for_shapes(distributed.global_shapes(batch))
        return self.net.plan_for(batch)

    def _pad(self, plan, batch):
        return distributed.pad_local(plan, batch) if self._distributed else plan.pad_inputs(batch)

    # -- the loop -----------------------------------------------------------
    def step(self, iters):
        """Run ``iters`` iterations (Caffe's ``Solver::Step``)."""
        p = self.param
        params = self._device_params()
        state = self._replicated(self.net.state_tree())
        self._opt_state = optim.set_iteration(self._opt_state, self.iter)
        if self._distributed:       # on the global mesh (also after a restore)
            self._opt_state = self._replicated(self._opt_state)
        self.net.clear_param_diffs()    # Caffe's ClearParamDiffs (the diffs may hold the history, donated below)
        stop_iter = self.iter + int(iters)
        # Caffe's Step restarts the loss smoothing at every call
        self._losses, self.smoothed_loss, self._start_iter = [], 0.0, self.iter
        batches = None
        tick, tick_iter = time.time(), self.iter
        self._install_signal_handlers()
        try:
            while self.iter < stop_iter:
                if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                    self._sync_to_net(params, state)
                    try:
                        self.test_all()
                    except NetspecError as e:     # e.g. a test net's data layer
                        self._data_failed(f"testing: {e}", params, state)
                batches = batches or self._fetch_batches()
                if isinstance(batches, _DataFailure):
                    self._data_failed(batches.error, params, state)
                rng = jax.random.fold_in(jax.random.PRNGKey(self._seed), self.iter)
                last = batches[-1]
                params, state, loss, outputs, plan = self._run_iteration(params, state, batches, rng)
                batches = self._fetch_batches() if self.iter + 1 < stop_iter else None  # overlaps the device step
                if not self._distributed:   # the net's blobs hold one process's slice there
                    self.net.show_pass(plan, last, outputs)
                loss = float(loss)
                if not math.isfinite(loss):
                    self._diverged(f"loss = {loss}", params, state)
                smoothed = self._update_smoothed_loss(loss)
                if p.display and self.iter % p.display == 0:
                    lapse = time.time() - tick
                    per_s = (self.iter - tick_iter) / lapse if lapse > 0 else 0.0
                    self.log(f"Iteration {self.iter} ({_g(per_s)} iter/s, {lapse:.3g}s/{p.display} iters), "
                             f"loss = {_g(smoothed)}")
                    self._log_outputs("Train", plan.exact,
                                      {k: plan.crop(k, distributed.to_host(v)) for k, v in outputs.items()})
                    self.log(f"Iteration {self.iter}, lr = {_g(learning_rate(p, self.iter, self.path))}")
                    tick, tick_iter = time.time(), self.iter
                self.iter += 1
                progress = getattr(self.log, "progress", None)
                if progress is not None:
                    progress(self.iter, int(p.max_iter), f"loss {smoothed:.4g}")
                request, self._requested = self._requested, None
                if (p.snapshot and self.iter % p.snapshot == 0) or request == "snapshot":
                    if not bool(_all_finite(params)):     # never let a diverged update replace a good snapshot
                        self._diverged("the weights are not finite", params, state)
                    self._sync_to_net(params, state)
                    self.snapshot()
                if request == "stop":
                    self.requested_early_exit = True
                    break
        finally:
            self._restore_signal_handlers()
            self._sync_to_net(params, state)

    def solve(self, resume_file=None):
        """Train to ``max_iter`` (Caffe's ``Solver::Solve``), optionally resuming a ``.solverstate``."""
        p = self.param
        self.requested_early_exit = False
        compiles = TOTALS.snapshot()
        self.log(f"Solving {self.net.label}")
        self.log(f"Learning Rate Policy: {p.lr_policy}")
        if resume_file:
            self.log(f"Restoring previous solver status from {resume_file}")
            self.restore(resume_file)
        self.step(int(p.max_iter) - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            self.log(TOTALS.since(compiles))
            self.log("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            if self._distributed:   # a pass of one process's slice would not be the net's loss
                self.log(f"Iteration {self.iter}, loss = {_g(self.smoothed_loss)}")
            else:
                self.net.forward()
                self.log(f"Iteration {self.iter}, loss = {_g(self._update_smoothed_loss(self.net.loss))}")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        self.log(TOTALS.since(compiles))
        self.log("Optimization Done.")

    def _update_smoothed_loss(self, loss):
        """Caffe's ``UpdateSmoothedLoss``: a running mean of the last ``average_loss`` losses (float)."""
        window = max(1, int(self.param.average_loss))
        loss, smoothed = np.float32(loss), np.float32(self.smoothed_loss)
        if len(self._losses) < window:
            self._losses.append(loss)
            size = np.float32(len(self._losses))
            smoothed = (smoothed * (size - 1) + loss) / size
        else:
            index = (self.iter - self._start_iter) % window
            smoothed = smoothed + (loss - self._losses[index]) / np.float32(window)
            self._losses[index] = loss
        self.smoothed_loss = float(smoothed)
        return self.smoothed_loss

    def _diverged(self, what, params, state):
        self._sync_to_net(params, state)
        raise NetspecError(f"{self.path}: iteration {self.iter}: {what}; training stopped "
                           f"({self._where_last_snapshot()}). Lower base_lr or check the data")

    def _where_last_snapshot(self):
        if not self._last_snapshot:
            return "no snapshot was written"
        model, state = self._last_snapshot
        return f"the last snapshot is {model}; --snapshot {state} resumes from it"

    def _fetch_batches(self):
        """The next iteration's batches, or a ``_DataFailure`` holding a data layer's
        error, raised when the loop gets to that iteration (the iteration before it
        finishes and snapshots as scheduled)."""
        try:
            return self._next_batches()
        except NetspecError as e:
            return _DataFailure(e)

    def _data_failed(self, error, params, state):
        """A data layer failed to give iteration ``self.iter``'s batch (or a test net failed
        before it): snapshot the weights trained so far (unless that snapshot exists or
        nothing was trained) and stop with a line naming the iteration and the layer's
        error (which names its file)."""
        self._sync_to_net(params, state)
        if self.iter > 0 and self._snapshot_iter != self.iter:
            if bool(_all_finite(params)):
                self.snapshot()
        raise NetspecError(f"{self.path}: iteration {self.iter}: {error}; training stopped "
                           f"({self._where_last_snapshot()})")

    def _sync_to_net(self, params, state):
        """The step's params and state become the net's blobs' values (no copy: they stay
        on the device until someone reads them).  For SGD the param diffs become Caffe's
        after an update: the momentum history, which is the value just subtracted."""
        self.net.set_param_tree(params, state)
        if self.type == "SGD":
            (history,) = optim.solver_state(self._opt_state).history
            self.net.set_param_diff_tree(history)

    def _log_outputs(self, which, graph, values):
        index = 0
        weights = {t: w for n in graph.nodes for t, w in zip(n.tops, n.loss_weights)}
        for name in graph.outputs:
            w = weights.get(name, 0.0)
            for v in np.asarray(values[name]).ravel():
                extra = f" (* {_g(w)} = {_g(w * v)} loss)" if w else ""
                self.log(f"    {which} net output #{index}: {name} = {_g(float(v))}{extra}")
                index += 1

    # -- testing ------------------------------------------------------------
    def test_all(self):
        """Run every test net for its ``test_iter`` passes and log the mean outputs."""
        results = []
        for i, net in enumerate(self.test_nets):
            results.append(self.test(i))
        return results

    def test(self, index=0):
        p, net = self.param, self.test_nets[index]
        self.log(f"Iteration {self.iter}, Testing net (#{index})")
        iterations = int(p.test_iter[index])
        sums, loss = None, 0.0
        hist = np.zeros((self.score_classes,) * 2, np.int64) if self.score_classes else None
        for _ in range(iterations):
            out = net.forward()
            values = {k: np.array(v, np.float64) for k, v in out.items()}
            if p.test_compute_loss:
                loss += net.loss
            sums = values if sums is None else {k: sums[k] + values[k] for k in sums}
            if hist is not None:
                hist += self._segmentation_hist(net)
        if p.test_compute_loss:
            self.log(f"Test loss: {_g(loss / max(1, iterations))}")
        means = {k: v / max(1, iterations) for k, v in (sums or {}).items()}
        self._log_outputs("Test", net.graph, means)
        if hist is not None:
            from .score import scores
            result = scores(hist)
            self.log(f"Test net #{index} segmentation: pixel accuracy = {_g(result['pixel_acc'])}, "
                     f"mean accuracy = {_g(result['mean_acc'])}, mean IU = {_g(result['mean_iu'])}, "
                     f"f.w. IU = {_g(result['fwavacc'])}")
            means["segmentation"] = result
        return means

    # FCN's scoring during training (the reference solve.py's seg_tests): set
    # ``solver.score_classes`` (``netspec train --score-classes N``) to log the
    # paper's four metrics of ``score_blob`` against ``label_blob`` at every test.
    score_classes = 0
    score_blob, label_blob = "score", "label"

    def _segmentation_hist(self, net):
        from .score import fast_hist
        for blob in (self.score_blob, self.label_blob):
            if blob not in net.blobs:
                raise NetspecError(f'{self.path}: the test net has no blob "{blob}" to score '
                                   '(--score-blob/--label-blob)')
        label = net.blobs[self.label_blob].data
        predicted = net.blobs[self.score_blob].data.argmax(axis=1)
        return fast_hist(label.reshape(-1).astype(np.int64), predicted.reshape(-1), self.score_classes)

    # -- snapshots ----------------------------------------------------------
    def _snapshot_prefix(self):
        prefix = self.param.snapshot_prefix
        if not prefix:
            prefix = os.path.splitext(self.path)[0] if self._base else "snapshot"
        elif os.path.isdir(prefix) and self._base:
            # Caffe's UpgradeSnapshotPrefixProperty: <directory>/<solver file stem>
            stem = os.path.splitext(os.path.basename(self.path))[0]
            prefix = os.path.join(prefix, stem)
        return prefix

    @property
    def snapshot_prefix(self):
        """``<prefix>`` of the ``<prefix>_iter_N.caffemodel``/``.solverstate`` snapshots."""
        return self._snapshot_prefix()

    def snapshot(self):
        """Write ``<prefix>_iter_<N>.caffemodel``, then ``.solverstate``, as a pair: each
        file atomically and durably (``caffemodel._write_atomically``), the
        ``.caffemodel`` before the ``.solverstate`` that names it, so a complete
        ``.solverstate`` always names a complete ``.caffemodel`` (``netspec.snapshots``).

        A failed write (disk full, ...) removes what this snapshot wrote, keeps the
        previous snapshot and raises a ``NetspecError`` naming the file, the error and
        the last good snapshot.  The first snapshot also removes the temporary files
        that killed writers left with this prefix."""
        from .caffemodel import write_solverstate
        from .snapshots import remove_stale_temp_files
        prefix = f"{self._snapshot_prefix()}_iter_{self.iter}"
        directory = os.path.dirname(prefix)
        model = prefix + ".caffemodel"
        state_file = prefix + ".solverstate"
        if self._distributed and not distributed.is_main():    # process 0 writes the snapshots
            self._last_snapshot, self._snapshot_iter = (model, state_file), self.iter
            return model, state_file
        written = []
        try:
            if directory:
                try:
                    os.makedirs(directory, exist_ok=True)
                except OSError as e:
                    raise NetspecError(f"{directory}: cannot create the snapshot directory "
                                       f"({e.strerror or e})") from None
            if not self._temp_files_checked:
                self._temp_files_checked = True
                for stale in remove_stale_temp_files(self._snapshot_prefix()):
                    self.log(f"Removed {stale}, left by a snapshot writer that was killed")
            if os.path.exists(state_file):
                # an older run's pair for this iteration: its .solverstate goes first, so
                # no moment pairs it with the .caffemodel written now
                _unlink_durably(state_file)
            self.log(f"Snapshotting to binary proto file {model}")
            self.net.save(model)
            written.append(model)
            self.log(f"Snapshotting solver state to binary proto file {state_file}")
            history = self._caffe_history()
            current_step = snapshot_current_step(self.param, self.iter)
            write_solverstate(state_file, self.iter, current_step, model, history)
        except NetspecError as e:
            for path in written:        # a .caffemodel without its .solverstate is no snapshot
                try:
                    os.unlink(path)
                except OSError:
                    pass
            if self._last_snapshot and self._last_snapshot[1] == state_file:
                self._last_snapshot = self._snapshot_iter = None     # it was being replaced
            raise NetspecError(f"{self.path}: iteration {self.iter}: snapshot failed: {e}; training stopped "
                               f"({self._where_last_snapshot()})") from None
        self._last_snapshot, self._snapshot_iter = (model, state_file), self.iter
        return model, state_file

    def _caffe_history(self):
        """History blobs in Caffe's learnable-param order (BatchNorm statistics get zero history)."""
        by_key = dict(zip([(k, s) for s in range(self._history_sets()) for k in self._order],
                          optim.history_to_caffe(self._opt_state, self._order)))
        blobs = []
        for s in range(self._history_sets()):
            for node in self.net.graph.nodes:
                for (owner, i) in node.param_keys:
                    if owner == node.name:
                        blobs.append(by_key[((owner, i), s)])
                for shape in self.net.graph.state_shapes.get(node.name, []):
                    blobs.append(np.zeros(shape, np.float32))
        return blobs

    def _history_sets(self):
        return len(optim.solver_state(self._opt_state).history)

    def restore(self, path):
        """Resume from a ``.solverstate`` (and the ``.caffemodel`` it names)."""
        from .caffemodel import read_solverstate
        from .snapshots import learned_net_path
        saved = read_solverstate(path)
        learned = learned_net_path(path, saved.learned_net)
        if learned:
            self.net.copy_from(learned)
        self.iter = int(saved.iter)
        history = list(saved.history)
        per_set = len(history) // max(1, self._history_sets())
        keep, position = [], 0
        for s in range(self._history_sets()):
            for node in self.net.graph.nodes:
                for (owner, i) in node.param_keys:
                    if owner == node.name:
                        keep.append(history[position] if position < len(history) else None)
                        position += 1
                position += len(self.net.graph.state_shapes.get(node.name, []))
            if position != per_set * (s + 1):
                raise NetspecError(f"{path}: has {len(history)} history blobs; this net and solver "
                                   f"type need {self._history_sets() * position // (s + 1)}")
        self._opt_state = optim.history_from_caffe(self._opt_state, self._order, keep, name=path)
        self._opt_state = optim.set_iteration(self._opt_state, self.iter)
        if learned:
            self._last_snapshot, self._snapshot_iter = (learned, path), self.iter

    # -- signals --------------------------------------------------------------
    sigint_effect = "stop"
    sighup_effect = "snapshot"

    def _install_signal_handlers(self):
        self._previous_handlers = {}

        def handler(effect):
            def on_signal(signum, frame):
                if effect != "none":
                    self._requested = effect
            return on_signal
        try:
            for sig, effect in ((signal.SIGINT, self.sigint_effect), (getattr(signal, "SIGHUP", None), self.sighup_effect)):
                if sig is not None:
                    self._previous_handlers[sig] = signal.signal(sig, handler(effect))
        except ValueError:  # not the main thread: leave signals alone
            self._previous_handlers = {}

    def _restore_signal_handlers(self):
        for sig, previous in getattr(self, "_previous_handlers", {}).items():
            signal.signal(sig, previous)


def shown_blobs(graph):
    """The blobs a training step hands back to ``solver.net.blobs``: the net's outputs,
    every blob a loss reads (what scripts plot) and the tops of data layers computed in
    the net (DummyData), in blob order."""
    wanted = set(graph.outputs)
    for node in graph.nodes:
        if any(node.loss_weights):
            wanted.update(node.bottoms)
        if not node.bottoms:
            wanted.update(node.tops)
    return [name for name in graph.blob_shapes if name in wanted and name not in graph.inputs]


def _unlink_durably(path):
    from .caffemodel import _fsync_directory
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise NetspecError(f"{path}: cannot remove the old snapshot ({e.strerror or e})") from None
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


class _DataFailure:
    """A data layer's error, raised when the loop reaches the iteration it was for."""

    def __init__(self, error):
        self.error = error


@jax.jit
def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] or [jnp.array(True)]))


def get_solver(path, **kwargs):
    """pycaffe's ``caffe.get_solver``: the solver of the type the prototxt names."""
    return Solver(path, **kwargs)


def _typed(kind):
    class TypedSolver(Solver):
        """pycaffe's typed solver: uses this update rule whatever the prototxt's ``type`` says."""

        def __init__(self, path, **kwargs):
            super().__init__(path, solver_type=kind, **kwargs)
    TypedSolver.__name__ = TypedSolver.__qualname__ = f"{kind}Solver"
    return TypedSolver


SGDSolver = _typed("SGD")
NesterovSolver = _typed("Nesterov")
AdaGradSolver = _typed("AdaGrad")
RMSPropSolver = _typed("RMSProp")
AdaDeltaSolver = _typed("AdaDelta")
AdamSolver = _typed("Adam")

"""Compiling: JAX's persistent compilation cache, and one log line per compiled executable.

netspec compiles one executable per net, kind of pass (forward, backward, training
step) and input bucket (``netspec.buckets``).  Each is compiled ahead of time here,
timed and logged (``Compiled train step of net "voc-fcn8s", bucket 512x384 in 7.9 s``),
and the process keeps running totals (``TOTALS``) that ``netspec train`` prints at the
end of a run.

JAX's persistent compilation cache is on by default, so a second run (or a second
process) loads executables instead of compiling them: directory ``$NETSPEC_CACHE_DIR``,
else ``$XDG_CACHE_HOME/netspec``, else ``~/.cache/netspec``; executables that took at
least ``MIN_COMPILE_SECONDS`` to compile are stored (JAX's own default of 1 s would
skip FCN's forward passes on fast machines).  On GPUs XLA's per-fusion autotuning
results are kept with them.  ``NETSPEC_NO_COMPILE_CACHE=1``, ``--no-compile-cache``
or ``disable_cache()`` turn it off; a cache directory the user configured in JAX
directly is left alone.
"""
import os
import time

import jax

MIN_COMPILE_SECONDS = 0.5


def default_cache_dir():
    if os.environ.get("NETSPEC_CACHE_DIR"):
        return os.environ["NETSPEC_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "netspec")


def enable_cache(directory=None):
    """Store and reuse compiled executables in ``directory`` (default ``default_cache_dir()``)."""
    directory = str(directory or default_cache_dir())
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_persistent_cache_enable_xla_caches", "xla_gpu_per_fusion_autotune_cache_dir")
    return directory


def disable_cache():
    jax.config.update("jax_enable_compilation_cache", False)


def configure_from_environment():
    """What ``import netspec`` does: the cache on in the per-user directory, unless turned
    off or already configured by the user."""
    if os.environ.get("NETSPEC_NO_COMPILE_CACHE", "") not in ("", "0"):
        disable_cache()
    elif os.environ.get("NETSPEC_CACHE_DIR") or jax.config.jax_compilation_cache_dir is None:
        enable_cache()


class Totals:
    """Compiles in this process: how many, seconds spent, how many came from the cache."""

    def __init__(self):
        self.count, self.seconds, self.cache_hits = 0, 0.0, 0

    def snapshot(self):
        return (self.count, self.seconds, self.cache_hits)

    def since(self, snapshot):
        """A one-line summary of the compiles after ``snapshot``."""
        count = self.count - snapshot[0]
        seconds = self.seconds - snapshot[1]
        hits = self.cache_hits - snapshot[2]
        cached = f" ({hits} loaded from the compile cache)" if hits else ""
        return f"Compiled {count} executable{'s' if count != 1 else ''} in {seconds:.1f} s{cached}"


TOTALS = Totals()
_cache_hits = [0]


def _count_cache_hits(event, **kwargs):
    if event == "/jax/compilation_cache/cache_hits":
        _cache_hits[0] += 1


jax.monitoring.register_event_listener(_count_cache_hits)


# XLA options for every executable compiled on the CPU.  Region-based copy insertion
# lets a training step update a weight in place although the backward pass still reads
# it (fc6's 411 MB weight was copied every FCN-8s step without it): 0.1 s of a 5.1 s
# step on the 2-core EPYC (BENCHMARKS.md).
CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def compiler_options():
    """The XLA options for executables compiled now (``CPU_COMPILER_OPTIONS`` when they
    will run on the CPU, as ``conv_grad.runs_on_cpu`` decides)."""
    from .layers.conv_grad import runs_on_cpu
    return dict(CPU_COMPILER_OPTIONS) if runs_on_cpu() else {}


def compile_logged(fn, args, what, log=None):
    """``fn`` (a ``jax.jit`` function) lowered and compiled for ``args``, with one log line."""
    hits = _cache_hits[0]
    start = time.perf_counter()
    compiled = fn.lower(*args).compile(compiler_options=compiler_options() or None)
    seconds = time.perf_counter() - start
    from_cache = _cache_hits[0] > hits
    TOTALS.count += 1
    TOTALS.seconds += seconds
    TOTALS.cache_hits += int(from_cache)
    if log is None:
        from .log import Log
        log = Log()
    log(f"Compiled {what} in {seconds:.2f} s" + (" (from the compile cache)" if from_cache else ""))
    return compiled


class Executables:
    """Compiled executables by key, each compiled (and logged) on first use."""

    def __init__(self, log=None):
        self.log = log
        self._compiled = {}

    def __contains__(self, key):
        return key in self._compiled

    def get(self, key, make, args, what):
        """The executable for ``key``; on a miss ``make()`` gives the ``jax.jit`` function,
        compiled for ``args`` (whose shapes and types every later call shares)."""
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = compile_logged(make(), args, what, self.log)
        return compiled

"""The `netspec` subcommands: each module has add_arguments(parser) and run(args) -> exit code."""


def add_execution_arguments(p):
    """``--buckets``, ``--precision`` and ``--no-compile-cache``, for every command that runs a net."""
    p.add_argument("--buckets", default="auto", metavar="N|SIZES|off",
                   help="input sizes that share one compiled executable: auto (default: the first size "
                        "runs exact, later sizes get each side rounded up to a multiple of 32 or of "
                        "the net's coarsest stride), N (a "
                        "multiple of N), a list of side sizes (256,384,512), or off (exact shapes, "
                        "one compile per size); results are exact either way")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                   help="fp32 (default: float32 as Caffe computes), tf32 (float32 traded for "
                        "speed: TF32 tensor-core matmuls on GPUs, Winograd F(4x4,3x3) "
                        "convolutions on CPUs, ~2e-5 relative), bf16 (bfloat16 compute; float32 "
                        "master weights, solver history, loss and statistics)")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not keep compiled executables across runs (default: keep them in "
                        "$NETSPEC_CACHE_DIR or $XDG_CACHE_HOME/netspec)")


def execution_options(args):
    """Apply ``--no-compile-cache``; return the keyword arguments for ``Net``/``Solver``."""
    from ..buckets import parse_policy
    from ..compilation import disable_cache
    if args.no_compile_cache:
        disable_cache()
    parse_policy(args.buckets)          # a bad value is an error before anything runs
    return {"buckets": args.buckets, "precision": args.precision}

"""Every Numba option of the CPU kernels, in one place.

Kernels take their decorator arguments from here and nowhere else, so the
flags can be audited (and changed) at a glance.
"""

import os
import warnings

from numba.core.cpu import ParallelOptions


def _cache_usable():
    """Whether Numba can write a cache for this package's functions.

    Installed read-only, with no writable user cache directory and no
    ``NUMBA_CACHE_DIR``, Numba refuses ``cache=True`` ("no locator
    available") at decoration time. Then: one warning, and the kernels are
    compiled in every process.
    """
    from numba.core.caching import FunctionCache

    try:
        FunctionCache(_cache_usable)
    except RuntimeError as exc:
        warnings.warn(
            f"fusedgrad: no writable directory for Numba's cache ({exc}); the kernels are "
            "compiled in every process. Set NUMBA_CACHE_DIR to a writable directory to "
            "cache them.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


#: Whether compiled kernels are cached on disk (``cache=True``).
CACHE = _cache_usable()

#: ``FUSEDGRAD_SERIAL=1`` compiles the parallel kernels without ``parallel=True``
#: (``prange`` runs as ``range``), so that ``NUMBA_BOUNDSCHECK=1`` reports an
#: out-of-bounds index as an ``IndexError`` (Numba raises none inside parallel
#: regions). For testing only; give such a run its own ``NUMBA_CACHE_DIR``,
#: as Numba's cache does not tell the two builds apart.
SERIAL = os.environ.get("FUSEDGRAD_SERIAL", "") == "1"


def _wide_vectors():
    """Whether the kernels are compiled for 64-byte vector registers (AVX-512).

    Numba compiles for the host CPU unless ``NUMBA_CPU_NAME`` names another
    (then ``NUMBA_CPU_FEATURES`` lists its features).
    """
    from llvmlite import binding as llvm
    from numba.core import config

    if config.CPU_NAME and config.CPU_NAME != "host":
        return "+avx512f" in (config.CPU_FEATURES or "")
    return bool(llvm.get_host_cpu_features().get("avx512f", False))


#: Register tiles of 64-byte vectors (AVX-512) in the packed Gram product
#: (``_tiles``), else of 32-byte ones.
WIDE_VECTORS = _wide_vectors()

# Fast-math flags: reassociation (lets LLVM vectorise reductions), contraction
# to FMA, reciprocal approximations and signed-zero freedom. ``nnan`` and
# ``ninf`` are deliberately left out: the overflow handling of the exponential,
# the sigmoid and the softmax relies on IEEE inf arithmetic, and with them LLVM
# may delete isnan/isfinite checks.
FASTMATH = {"reassoc", "contract", "arcp", "nsz"}

#: Options of a serial jitted helper or inner loop.
JIT = dict(cache=CACHE, nogil=True, fastmath=FASTMATH, error_model="numpy")

#: Parallel transformations of a top-level kernel: only its explicit
#: ``prange`` loops. NumPy calls and array expressions (``np.zeros`` of the
#: per-group buffers above all) are not turned into parallel loops of their
#: own: each such loop is one more start of the thread pool per call (about
#: 1.2 us even on one thread), where the work is a few kilobytes of memset.
#: Measured at 512 x 32 float32 on the calling thread: ``gram`` 13.5 -> 9.7 us.
PARALLEL_TRANSFORMS = dict(prange=True, numpy=False, reduction=False, setitem=False,
                           inplace_binop=False, comprehension=False, stencil=False,
                           fusion=True)

#: Options of a top-level parallel kernel (a fresh ``ParallelOptions`` each:
#: Numba consumes the dict it is built from).
PARALLEL = dict(JIT, parallel=False if SERIAL else ParallelOptions(dict(PARALLEL_TRANSFORMS)))

#: Options of a small device-free helper meant to be inlined into its caller.
INLINE = dict(JIT, inline="always")

#: Options of a loop that must round every operation as NumPy does (no FMA
#: contraction, no reciprocal for a division): the optimizers' updates, which
#: reproduce scikit-learn's NumPy arithmetic bit for bit.
EXACT = dict(JIT, fastmath=False)

# Work partition. Rows are cut into chunks of ``chunk_rows`` rows; the chunks
# are dealt, as contiguous runs, to a fixed number of groups that does not
# depend on the number of threads; each group accumulates its sums in its own
# buffer, and the buffers are added in group order. The result is therefore
# bit-identical for any thread count.

#: Largest number of groups (per-group partial buffers) of a kernel.
MAX_GROUPS = 16

#: Budget, in bytes, of all per-group gradient buffers of one call together;
#: fewer groups are used when the parameters are large.
GROUP_BUFFER_BYTES = 128 * 2**20

#: Bytes of per-chunk working set (inputs, activations and their gradients)
#: that the chunk size aims at: about half of a core's L2 cache.
CHUNK_BYTES = 512 * 2**10

#: A chunk has at least ``group_bytes / ROWS_PER_PARTIAL_BYTE`` rows, so that
#: large partial gradients (fat layers) are updated rarely enough.
ROWS_PER_PARTIAL_BYTE = 1024

#: Bounds of the chunk size, in rows.
MIN_CHUNK_ROWS = 64
MAX_CHUNK_ROWS = 2048  # fat layers: (16384, 784, 1024, 10) f32 175-185 ms vs 186-192 at 1024

#: Partial sums of at most this many elements (all groups together) are
#: added serially by ``sum_groups``: below it, starting the worker threads
#: costs more than the additions.
SERIAL_SUM_ELEMENTS = 1 << 18  # measured: 16 x 9,618 serial 16 us, 2 threads 20

#: A call of a kernel whose float inputs total fewer bytes than its entry
#: here runs its parallel loops on the calling thread alone
#: (``_blas.serial_call``): waking the other thread after the caller's Python
#: costs more than it saves on small inputs. The compiled core switches the
#: thread count itself, at no measurable cost. Crossovers measured with 2
#: threads, 32-wide layers, K = 10, 20 us of Python between calls, medians
#: of 300 calls (serial / parallel time):
#:
#: * ``mlp_loss_grad`` 0.95 at 36 KB, 1.11 at 68; ``network_loss_grad`` 0.95
#:   and 1.09 at the same sizes;
#: * ``affine_activation`` float32 0.90 at 100 KB, 1.02 at 132; float64 0.88
#:   at 72 KB, 1.07 at 136;
#: * ``softmax_cross_entropy`` (the bytes of ``Z``) float32 1.01 at 20 KB,
#:   1.09 at 30; float64 0.91 at 10 KB, 1.10 at 20;
#: * ``gram`` 0.81 at 128 KB, 0.99 at 256, 1.22 at 512;
#: * ``ols_loss_grad`` 0.87 at 256 KB, 0.95 at 512, 1.41 at 1 MB;
#: * ``affine_activation_backward`` (``X``, ``A``, ``dA``) 1.04 at 384 KB,
#:   0.92 at 1.5 MB, 1.74 at 6 MB: about even over that range.
SERIAL_CALL_BYTES = {
    "mlp_loss_grad": 64 * 2**10,
    "network_loss_grad": 64 * 2**10,
    "affine_activation": 128 * 2**10,
    "affine_activation_backward": 512 * 2**10,
    "softmax_cross_entropy": 24 * 2**10,
    "gram": 256 * 2**10,
    "ols_loss_grad": 512 * 2**10,
}

# ---------------------------------------------------------------------------
# CUDA kernels (fusedgrad.kernels.cuda)
# ---------------------------------------------------------------------------
# The CUDA kernels are built by factories that read these values when a kernel
# is first needed for a given shape class and dtype; the values are part of the
# factories' cache keys, so changing one (the tests shrink them so that tiny
# inputs span several blocks) builds new kernels. Block sizes are threads per
# block; every size below must be a power of two unless said otherwise.

#: Options of every ``@cuda.jit`` kernel and device function. No fast math:
#: the sigmoid and the softmax rely on IEEE inf arithmetic, and ``__expf``
#: loses accuracy for large arguments.
CUDA_JIT = dict(fastmath=False)

#: The float32 sigmoid divides by ``__fdividef`` (at most 2 ulp; see
#: ``cuda._device.fast_sigmoid``) instead of the IEEE division; ``exp`` stays
#: the accurate one. Not measured on a GPU yet: ``benchmarks/gpu_check.py``
#: times both and checks both against the float64 reference.
CUDA_FAST_SIGMOID = True

#: Leave the range check of device labels to the kernels that index by them
#: (softmax-CE, the fused MLP; see ``cuda/softmax.py``, "Labels outside
#: [0, K)"): a label outside the classes makes the loss NaN, and only then
#: are the labels checked and the ValueError raised. False: a check kernel
#: and a synchronising copy before the kernels, as before. Not measured on a
#: GPU yet (``benchmarks/gpu_check.py`` times both).
CUDA_LABELS_IN_KERNEL = True

#: Elements a thread tests per round of the NaN/inf count of the input checks
#: (``check_finite``), their loads issued together; 1: one load a round, as
#: before. With it the check's grid is as many blocks as fit at once. Not
#: measured on a GPU yet (``benchmarks/gpu_check.py`` times both).
CUDA_CHECK_UNROLL = 8

#: Arrays whose NaN/inf counts one launch makes (``check_finite`` on device
#: inputs; at most 4, of one dtype): ``mlp_loss_grad``'s five inputs take two
#: launches instead of five. 1: a launch each, as before. Not measured on a
#: GPU yet.
CUDA_CHECK_GROUP = 4

#: Launch kernels through ``cuda._runtime.launch``, which packs a launch's
#: arguments itself (about 0.5 us an array on a 2-core VM) instead of numba's
#: per-launch typing and argument marshalling (about 6 us an array there,
#: 12 for an array not launched before); the packing is checked against
#: numba's own once per kernel and argument types, and anything it does not
#: reproduce exactly goes through numba's launch. False: numba's launch
#: always. ``benchmarks/cuda_host_cost.py`` measures both.
CUDA_FAST_LAUNCH = True

#: Threads per block of the one-dimensional kernels (checks, elementwise and
#: column-sum passes, the second pass over per-block partial sums).
CUDA_TPB = 256

#: Blocks per multiprocessor of the grid-stride kernels: the grid is
#: ``min(work, CUDA_BLOCKS_PER_SM * multiprocessors)`` blocks.
CUDA_BLOCKS_PER_SM = 4

#: Upper bound on the grid of every grid-stride kernel, or None (then only
#: ``CUDA_BLOCKS_PER_SM`` bounds it). The tests set a small value so that the
#: grid-stride loops run more than once.
CUDA_MAX_BLOCKS = None

#: Multiprocessors assumed when the device does not report its count (the
#: simulator).
CUDA_DEFAULT_SMS = 2

#: Static shared memory, in bytes, one block may use (48 KiB is the limit of
#: static shared memory on every CUDA GPU).
CUDA_SHARED_BYTES = 48 * 1024

#: Second passes over per-block partial sums with at most this many columns
#: (losses, bias gradients) use a block per 32 columns; wider ones a thread
#: per column (see ``_runtime.sum_partials``).
CUDA_SUM_BLOCK_MAX_COLS = 1024

#: Where a call sums two sets of block partials (a gradient's and a loss's),
#: one launch does both (``rt.sum_partials(..., also=...)``). False: a
#: launch each, as before. Not measured on a GPU yet.
CUDA_SUM_PAIRS = True

#: Reduce within a warp with ``shfl_down_sync`` (True), through shared memory
#: only (False), or decide at build time (None: shuffles on a real GPU, shared
#: memory under the simulator, which does not implement warp shuffles).
CUDA_WARP_SHUFFLE = None

# Softmax cross-entropy. Up to ``CUDA_SOFTMAX_STAGED_MAX_K`` classes a block
# stages a tile of ``CUDA_SOFTMAX_TPB`` whole rows in shared memory with
# coalesced loads and each thread then handles one row; for more classes a
# block works on one row at a time, its threads striding over the row.
CUDA_SOFTMAX_TPB = 128
CUDA_SOFTMAX_STAGED_MAX_K = 32
#: Read a full tile into registers with all of a thread's loads issued
#: together, and the block's next tile during this one (see
#: ``softmax._staged_kernel``); False: the plain load-and-store loop.
CUDA_SOFTMAX_PREFETCH = True
#: Blocks per multiprocessor of the staged softmax kernel, or None: as many
#: as the GPU holds at once (``_runtime.resident_grid``, the driver's
#: occupancy calculator). With the prefetch its float32 build takes 56
#: registers at K = 10 and 128 threads (ptxas, sm_90), so 9 blocks are
#: resident: 1,152 threads, each with 10 loads in flight. At 3.5 TB/s and about
#: 1 us of latency an SM needs some 25 KB in flight, which the first GPU
#: run's 4 blocks of the plain loop (four loads a thread) did not reach.
CUDA_SOFTMAX_BLOCKS_PER_SM = None

# Tiled matrix product (numba.cuda): a block computes a BM x BN tile of C in
# steps of BK, each thread a TM x TN micro-tile held in registers;
# (BM / TM) * (BN / TN) threads per block.
CUDA_GEMM_BM = 64
CUDA_GEMM_BN = 64
CUDA_GEMM_BK = 16
CUDA_GEMM_TM = 4
CUDA_GEMM_TN = 4

#: Which allocator gives the kernel wrappers their outputs and scratch:
#: "numba" (``cuda.device_array``: ``cudaMalloc`` per array, frees batched and
#: synchronising), "cupy" (CuPy's caching memory pool: a freed array's memory
#: is kept for the next call) or "auto" (CuPy when it imports and a real GPU
#: is in use, else numba).
CUDA_ALLOCATOR = "auto"

#: Which library computes the large matrix products: "numba" (the tiled
#: kernel above), "cupy" (cuBLAS through CuPy) or "auto" (CuPy when it imports
#: and a real GPU is in use, else numba).
CUDA_GEMM = "auto"

#: A product ``A^T B`` summed over many rows (weight gradients, the Gram
#: matrix) is split over at most this many row ranges, each block writing its
#: own partial tile; the partials are then added in a fixed order.
CUDA_MAX_SPLITS = 64

# Thin products (``_gemm.matmul`` of C = op(A) @ op(B) without ``ta``, where B
# is small): a block keeps B in shared memory and walks over tiles of rows of
# A, each thread a micro-tile of C in registers; the epilogue is applied as the
# tile goes to shared memory, and the tile is stored to C as one contiguous
# block. One pass over A and C, where cuBLAS needs a second, elementwise pass
# for the epilogue and the numba tiled kernel leaves most of its 64-column
# tile idle. (``_gemm.plan_thin`` chooses the layout.)
#: Use the thin kernel where it fits (False: the tiled kernel or cuBLAS).
CUDA_THIN = True
#: Threads per block of the thin kernel.
CUDA_THIN_TPB = 256
#: Most rows per tile (fewer when shared memory is short).
CUDA_THIN_MAX_ROWS = 128
#: Most outputs one thread keeps in registers.
CUDA_THIN_MAX_ACC = 32
#: Most values of B (inner dimension x output columns) it takes.
CUDA_THIN_MAX_B = 8192
#: Products summed over rows, ``A^T B`` with A and B thin (weight gradients,
#: the Gram matrix): a block keeps its share of the sums in registers while it
#: walks over tiles of rows of A and B (``_gemm.plan_thin_sum``), where there
#: are at most this many multiply-adds per value read (``Ka * Nb / (Ka + Nb)``:
#: 16 is a square of 32 columns); wider products are bound by arithmetic, and
#: go to cuBLAS or the tiled kernel.
CUDA_THIN_SUM_MAX_RATIO = 16
#: A thin layer's backward pass (``affine_activation_backward``) in one kernel
#: where both of the above fit: dZ formed in shared memory and never stored,
#: dW and db summed and dX computed from the same tile (``affine._backward_kernel``);
#: False: a pass for dZ, then the two thin kernels.
CUDA_THIN_BACKWARD = True

# The fused MLP kernel (thin layers): one block keeps its share of the weight
# gradients in registers while it walks over tiles of rows; a row tile's
# activations live only in shared memory.
#: Threads per block of the fused kernel.
CUDA_FUSED_TPB = 256
#: Largest number of dW1 (and, separately, dW2) partial sums one thread keeps
#: in registers; layers with ``d * h > CUDA_FUSED_TPB * CUDA_FUSED_MAX_ACC``
#: take the layered path (matrix products with fused elementwise stages).
CUDA_FUSED_MAX_ACC = 64
#: Most rows per tile of the fused kernel (fewer when shared memory is short).
CUDA_FUSED_MAX_ROWS = 128
#: The fused kernel with flat shared tiles walked by unsigned running offsets
#: (``mlp._flat_kernel``: the same arithmetic with far fewer index
#: instructions), or False for the first one (``mlp._fused_kernel``).
CUDA_FUSED_FLAT = True
#: Blocks per multiprocessor of the fused kernel.
CUDA_FUSED_BLOCKS_PER_SM = 2
#: Blocks of the fused kernel that must fit on one multiprocessor at once,
#: passed to the compiler as ``launch_bounds=(CUDA_FUSED_TPB, n)`` (it then
#: keeps a thread to at most ``65536 / (n * CUDA_FUSED_TPB)`` registers, and
#: spills beyond), or None (no bound: 160 registers at (64, 128, 10) float32,
#: so one 256-thread block per multiprocessor). ``benchmarks/gpu_check.py``
#: times both.
CUDA_FUSED_MIN_BLOCKS = None

#: Rows per tile of the OLS kernel, at most (fewer when a row is wide).
CUDA_OLS_MAX_ROWS = 64
#: The OLS kernel's register prefetch of full tiles (as ``CUDA_SOFTMAX_PREFETCH``),
#: where a thread's share of a tile is at most 8 values (more costs too many
#: registers: see ``ols._ols_kernel``).
CUDA_OLS_PREFETCH = True
#: Blocks per multiprocessor of the OLS kernel, or None: as many as fit at
#: once (as ``CUDA_SOFTMAX_BLOCKS_PER_SM``).
CUDA_OLS_BLOCKS_PER_SM = None

#: The layered MLP path processes the rows in chunks whose hidden activations
#: take at most this many bytes.
CUDA_CHUNK_BYTES = 1 << 30

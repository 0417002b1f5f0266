"""Every Numba option of the CPU kernels, in one place.

Kernels take their decorator arguments from here and nowhere else, so the
flags can be audited (and changed) at a glance.
"""

# Fast-math flags: reassociation (lets LLVM vectorise reductions), contraction
# to FMA, reciprocal approximations and signed-zero freedom. ``nnan`` and
# ``ninf`` are deliberately left out: the overflow handling of the exponential,
# the sigmoid and the softmax relies on IEEE inf arithmetic, and with them LLVM
# may delete isnan/isfinite checks.
FASTMATH = {"reassoc", "contract", "arcp", "nsz"}

#: Options of a serial jitted helper or inner loop.
JIT = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")

#: Options of a top-level parallel kernel.
PARALLEL = dict(JIT, parallel=True)

#: Options of a small device-free helper meant to be inlined into its caller.
INLINE = dict(JIT, inline="always")

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
MAX_CHUNK_ROWS = 1024

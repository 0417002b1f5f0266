"""Every public kernel against its NumPy reference.

One class per kernel, parameterised over implementation (``numpy``,
``fused``, ``cuda``), size (:data:`common.SIZES`) and dtype; ``FusedOverNumpy``
tracks the time of each fused kernel as a fraction of the reference's,
measured in one process.
"""

from . import common


class _Kernel:
    """Time one call of ``function``; the data are built and the kernel compiled in setup."""

    function = None
    params = [["numpy", "fused", "cuda"], common.SIZE_NAMES, common.DTYPES]
    param_names = ["implementation", "size", "dtype"]
    # A large call of the reference takes a few tenths of a second.
    timeout = 120

    def setup(self, impl, size, dtype):
        self.call, prepare = common.implementation(impl, self.function)
        self.args = prepare(common.kernel_args(self.function, size, dtype))
        common.warm_up((self.function, impl, size, dtype), self.call, self.args)

    def time_call(self, impl, size, dtype):
        self.call(*self.args)


class AffineSigmoid(_Kernel):
    """``affine_sigmoid(X, W, b)``: sigmoid(X W + b), X (N, d), W (d, h)."""

    function = "affine_sigmoid"


class AffineSigmoidBackward(_Kernel):
    """``affine_sigmoid_backward(X, A, dA, W)``: dW, db and dX of one sigmoid layer."""

    function = "affine_sigmoid_backward"


class SoftmaxCrossEntropy(_Kernel):
    """``softmax_cross_entropy(Z, y)``: mean cross-entropy and dZ, Z (N, K)."""

    function = "softmax_cross_entropy"


class MLPLossGrad(_Kernel):
    """``mlp_loss_grad(X, y, W1, b1, W2, b2)``: loss and gradient of the 2-layer MLP.

    ``peakmem_call`` is the peak resident memory of the process (data
    included): the reference stores every activation of the batch, the fused
    kernel only per-thread chunks.
    """

    function = "mlp_loss_grad"

    def peakmem_call(self, impl, size, dtype):
        self.call(*self.args)


class OLSLossGrad(_Kernel):
    """``ols_loss_grad(X, y, w)``: OLS loss and gradient, X (N, d)."""

    function = "ols_loss_grad"


class Gram(_Kernel):
    """``gram(X, y)``: X^T X and y X, X (N, d)."""

    function = "gram"


class NetworkLossGrad(_Kernel):
    """``network_loss_grad(X, y, coefs, intercepts, activation="relu")``: loss and
    gradient of an MLP with two hidden layers, ``h`` and ``h // 2`` units."""

    function = "network_loss_grad"


class FusedOverNumpy:
    """Time of a kernel divided by the time of its NumPy reference (lower is better).

    Both are timed in the same process, alternating, so a change of the
    machine's speed between runs cancels out of the ratio: 0.1 means the
    kernel takes a tenth of the reference's time.
    """

    params = [common.KERNELS, ["fused", "cuda"], common.SIZE_NAMES, common.DTYPES]
    param_names = ["kernel", "implementation", "size", "dtype"]
    unit = "ratio"
    timeout = 180

    def setup(self, function, impl, size, dtype):
        host_args = common.kernel_args(function, size, dtype)
        self.base, _ = common.implementation("numpy", function)
        self.call, prepare = common.implementation(impl, function)
        self.base_args = host_args
        self.args = prepare(host_args)
        common.warm_up((function, "numpy", size, dtype), self.base, self.base_args)
        common.warm_up((function, impl, size, dtype), self.call, self.args)

    def track_time_ratio(self, function, impl, size, dtype):
        return common.ratio_of_times(self.call, self.args, self.base, self.base_args)

"""Ordinary least squares with scikit-learn's interface, built on the fused kernels."""

import math
import numbers

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

from fusedgrad._warn import warn
from fusedgrad.kernels.ols import centered_gram, ols_loss_grad
from fusedgrad.kernels.qr import tsqr
from fusedgrad.models import _dask, _persist
from fusedgrad.models._base import (
    BaseModel,
    ConvergenceWarning,
    RegressorMixin,
    _is_int,
    _is_real,
    _resolve_dtype,
    _sk,
    check_array,
    check_sample_weight,
    check_target,
    feature_names,
    sample_count,
)

__all__ = ["LinearRegression", "RankDeficientWarning", "IllConditionedWarning"]

_SOLVERS = ("auto", "normal", "qr", "gd")

#: Rows whose mean shifts the data before the QR factorisation when the
#: exact means are not known yet (solver='qr'); any shift is exact.
_SHIFT_ROWS = 1024


class _Passes:
    """The passes of the exact solvers over ``X`` and ``y`` in memory (the fused
    kernels); :class:`fusedgrad.models._dask.Passes` is the same over dask arrays."""

    def __init__(self, X, y, intercept, sample_weight=None):
        self.X, self.y, self.intercept, self.sw = X, y, intercept, sample_weight

    def moments(self):
        """``(mean, scatter)`` of ``[X, y]`` (:func:`centered_gram`; weighted with weights)."""
        return centered_gram(self.X, self.y, sample_weight=self.sw, check_finite=False)

    def head_mean(self, rows):
        """The float64 column means of ``[X, y]`` over the first ``rows`` rows
        (weighted, unless their weights are all 0)."""
        head = slice(0, min(self.X.shape[0], rows))
        return _head_mean(self.X[head], self.y[head], None if self.sw is None else self.sw[head])

    def r_factor(self, shift):
        """:func:`tsqr`'s R factor of ``[1, X - shift, y - shift]`` (no ones column
        without an intercept; rows times the square roots of the weights)."""
        return tsqr(self.X, self.y, shift, intercept=self.intercept, sample_weight=self.sw,
                    check_finite=False)


def _head_mean(X, y, sw):
    """Float64 column means of ``[X, y]``, weighted by ``sw`` unless it is None or all 0
    (the QR's shift: any shift is exact, one near the means keeps it accurate)."""
    A = np.c_[X.astype(np.float64), y.astype(np.float64)]
    if sw is not None and np.any(sw > 0):
        return np.average(A, axis=0, weights=sw.astype(np.float64))
    return A.mean(axis=0)


class RankDeficientWarning(UserWarning):
    """The (centred) design matrix is rank deficient: a minimum-norm solution was returned."""


class IllConditionedWarning(UserWarning):
    """solver='normal' was forced on an ill-conditioned problem: accuracy may be lost."""


def _scaled(A):
    """``D A D`` with ``D = diag(A)^(-1/2)`` (1 where the diagonal is 0) and ``D``."""
    diag = np.diag(A).copy()
    scale = np.ones_like(diag)
    positive = diag > 0
    scale[positive] = 1.0 / np.sqrt(diag[positive])
    return A * scale[:, None] * scale[None, :], scale


def _cholesky_rcond(As):
    """Cholesky factor of the symmetric ``As`` and the reciprocal of its estimated
    1-norm condition number; ``(None, 0.0)`` when ``As`` is not numerically positive definite."""
    try:
        factor = scipy.linalg.cho_factor(As, lower=False, check_finite=False)
    except np.linalg.LinAlgError:
        return None, 0.0
    anorm = np.abs(As).sum(axis=0).max()
    rcond, info = lapack.dpocon(factor[0], anorm, uplo="U")
    if info != 0:
        return None, 0.0
    return factor, float(rcond)


def _truncated_solve(U, sigma, Vt, rhs, tol):
    """Minimum-norm solution from an SVD, dropping ``sigma < tol * sigma.max()``; and the rank."""
    if sigma.size == 0 or sigma[0] == 0:
        return np.zeros(Vt.shape[1]), 0
    rank = int(np.count_nonzero(sigma > tol * sigma[0]))
    z = (U[:, :rank].T @ rhs) / sigma[:rank]
    return Vt[:rank].T @ z, rank


@_persist.register
class LinearRegression(RegressorMixin, BaseModel):
    r"""Ordinary least squares: the lecture's linear model with scikit-learn's interface.

    Minimises :math:`L(w, b) = \frac1{2n} \lVert y - Xw - b \rVert^2` (``b`` only
    with ``fit_intercept``), or with ``fit(..., sample_weight=s)`` the weighted
    :math:`\sum_i s_i (y_i - x_i w - b)^2 / (2 \sum_i s_i)`. Every solver reads ``X`` in place, in its own
    dtype, in one or a few parallel passes; ``X`` is never copied (int or
    non-contiguous input is converted once, as in scikit-learn).

    Parameters
    ----------
    fit_intercept : bool, default True
        Fit the intercept ``b`` (the lecture's constant feature
        :math:`x_{i1} = 1`). It is handled by centring: the kernels return
        the column means and the centred Gram matrix (or the QR factor of
        ``[1, X, y]``) without forming a centred or augmented copy of ``X``.
    solver : {'auto', 'normal', 'qr', 'gd'}, default 'auto'
        * ``'normal'``: the analytic solution
          :math:`w = (X^T X)^{-1} X^T y` from one fused pass
          (:func:`fusedgrad.kernels.ols.centered_gram`), solved by Cholesky
          after scaling ``X^T X`` to unit diagonal. Fastest; its relative
          error grows like :math:`\kappa(X)^2 \epsilon`. If the scaled
          ``X^T X`` has an estimated condition number above
          :math:`1/\sqrt\epsilon` an :class:`IllConditionedWarning` is
          issued; if it is numerically singular (Cholesky fails or the
          condition number exceeds :math:`1/(d \epsilon)`), a
          minimum-norm solution from its eigendecomposition is returned with
          a :class:`RankDeficientWarning`.
        * ``'qr'``: tall-skinny QR of ``[1, X, y]`` in float64
          (:func:`fusedgrad.kernels.qr.tsqr`): error like
          :math:`\kappa(X) \epsilon`, as ``numpy.linalg.lstsq``; about 2-4
          times the work of ``'normal'``. If the centred, column-scaled
          ``X`` has singular values below :math:`d \epsilon` times the
          largest (``epsilon`` of X's dtype), the features are numerically
          dependent: the minimum-norm solution (in units of the column
          norms) over the numerical rank is returned with a
          :class:`RankDeficientWarning`, and ``rank_ < n_features_in_``.
        * ``'gd'``: the lecture's gradient descent, one fused
          :func:`fusedgrad.kernels.ols_loss_grad` pass per iteration;
          see ``learning_rate``, ``max_iter`` and ``tol``.
        * ``'auto'``: ``'normal'`` when the scaled ``X^T X`` is positive
          definite with an estimated condition number below
          :math:`1/\sqrt\epsilon` (then the normal equations lose at most
          about half the digits, and usually far fewer); otherwise a second
          pass by ``'qr'`` (with its rank check). ``solver_`` tells which ran.
    learning_rate : 'auto' or float, default 'auto'
        Step size of ``'gd'``. ``'auto'`` uses :math:`1/\lambda_{max}` of the
        Hessian :math:`X_c^T X_c / n` (:math:`X_c` the centred ``X`` with
        an intercept), the largest step that is safe for every problem; it
        costs one extra pass.
    max_iter : int, default 1000
        Largest number of gradient-descent iterations.
    tol : float, default 1e-6
        Gradient descent stops when the gradient's norm falls below ``tol``
        times its norm at the start (:math:`w = 0`).
    dtype : None, 'float32' or 'float64', default None
        Compute dtype. ``None`` keeps float32 and float64 input as it is and
        converts other numbers to float64.
    device : {'cpu', 'cuda'}, default 'cpu'
        Where ``fit`` runs. ``'cuda'`` (needs numba-cuda and a CUDA GPU,
        see :mod:`fusedgrad.kernels.cuda`; ``fit`` raises a RuntimeError
        without one) copies ``X`` and ``y`` to the GPU once per fit and, with
        ``fit_intercept``, centres the device copies in place (column means
        in float64, then a shift by the means in X's dtype; no augmented
        column). ``'normal'``: the Gram matrix is formed on the GPU
        (:func:`fusedgrad.kernels.cuda.gram`) and the small ``(d, d)``
        solve runs on the host, as on the CPU. ``'gd'``: ``w`` stays on the
        GPU; each iteration is one fused pass
        (:func:`fusedgrad.kernels.cuda.ols_loss_grad`) and an update kernel,
        and copies two numbers back (the loss and the gradient's norm).
        ``'auto'`` is ``'normal'`` there (no QR on the GPU: an ill-conditioned
        problem gets ``'normal'``'s warnings instead of the QR fallback),
        and ``'qr'`` raises a ValueError. ``n_iter_`` of ``'normal'`` is 1
        (the centring pass is not counted). ``predict`` runs on the host.

    Attributes
    ----------
    coef_ : ndarray, shape (n_features,)
        Weights, in the compute dtype.
    intercept_ : float scalar of the compute dtype
        ``b`` (0 without ``fit_intercept``).
    n_features_in_ : int
    feature_names_in_ : ndarray of str objects, shape (n_features_in_,)
        The column names of a dataframe ``X`` given to ``fit``, where all are
        strings; absent otherwise. A later ``X`` with other names, or the
        same in another order, is refused (``ValueError``).
    solver_ : str
        The solver that produced ``coef_``: ``'normal'``, ``'qr'`` or ``'gd'``.
    rank_ : int
        Numerical rank of the (centred) design found by the solver
        (``n_features_in_`` unless a :class:`RankDeficientWarning` was given).
    cond_ : float or None
        Estimated 1-norm condition number of the scaled ``X^T X`` (inf when
        singular), when the solver computed it (``'normal'`` and ``'auto'``).
    n_iter_ : int
        ``'gd'``: iterations run (passes of ``ols_loss_grad``; the step size
        and the means take one more pass). Other solvers: passes over ``X``
        (1, or 2 when ``'auto'`` fell back to QR).
    loss_curve_ : list of float
        ``'gd'`` only: the loss :math:`L(w, b)` at the start of each iteration.

    Notes
    -----
    float32 input is read, multiplied and factorised in float32 by the
    ``'normal'`` and ``'gd'`` solvers; the pass of ``'normal'`` sums each
    chunk of rows in float32 and the chunks in float64, so accuracy does not
    degrade with the number of rows. The small ``(d, d)`` solve runs in
    float64. ``'qr'`` converts one cache-sized chunk at a time to float64.
    """

    _fitted_attribute = "coef_"

    def __init__(self, fit_intercept=True, solver="auto", learning_rate="auto", max_iter=1000,
                 tol=1e-6, dtype=None, device="cpu"):
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.tol = tol
        self.dtype = dtype
        self.device = device

    # --- parameters -------------------------------------------------------------

    def _check_params(self):
        if not isinstance(self.fit_intercept, (bool, np.bool_)):
            raise TypeError(f"fit_intercept must be True or False, got {self.fit_intercept!r}")
        if not isinstance(self.solver, str) or self.solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {_SOLVERS}, got {self.solver!r}")
        lr = self.learning_rate
        if not (isinstance(lr, str) and lr == "auto"):
            if not _is_real(lr) or not math.isfinite(lr) or lr <= 0:
                raise ValueError(f"learning_rate must be 'auto' or a positive number, got {lr!r}")
        if not _is_int(self.max_iter) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not _is_real(self.tol) or not self.tol >= 0 or not math.isfinite(self.tol):
            raise ValueError(f"tol must be a non-negative number, got {self.tol!r}")
        _resolve_dtype("dtype", self.dtype)
        if not isinstance(self.device, str) or self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and self.solver == "qr":
            raise ValueError(
                "solver='qr' has no GPU implementation: with device='cuda' use solver='normal', "
                "'auto' or 'gd', or use device='cpu'"
            )

    # --- fit ----------------------------------------------------------------------

    def fit(self, X, y, sample_weight=None):
        r"""Fit the linear model.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features)
            Real numbers, no NaN or infinity. A dask array is fitted block by
            block, without being loaded whole (solvers ``'auto'``, ``'normal'``
            and ``'qr'``, on the CPU; see :mod:`fusedgrad.models._dask`).
        y : array_like, shape (n_samples,)
        sample_weight : float or array_like, shape (n_samples,), optional
            Non-negative weights of the samples (finite, with a positive sum):
            the fit minimises :math:`\sum_i s_i (y_i - x_i w - b)^2`, as
            scikit-learn's does. A number weights every sample alike. Every
            solver and device takes them, in the fused passes (no weighted
            copy of ``X`` on the CPU); a sample of weight 0 counts as absent.
            With a dask ``X``, a dask array (or one in memory) chunked as
            its rows or not.

        Returns
        -------
        self
        """
        self._check_params()
        names = feature_names(X)
        if _dask.is_dask_collection(X) or _dask.is_dask_collection(y):
            X, y, sw, dtype = self._dask_inputs(X, y, sample_weight)
            source = _dask.Passes(X, y, dtype, self.fit_intercept, sw)
            total, n_eff = source.weight_stats()
        else:
            X = check_array("X", X, dtype=self.dtype, n_samples=sample_count("y", y),
                            samples_of="y")
            y = check_target(y, X.shape[0], X.dtype)
            sw, total, n_eff = check_sample_weight(sample_weight, X.shape[0], X.dtype)
            dtype = X.dtype
            source = _Passes(X, y, self.fit_intercept, sw)
        N, d = X.shape
        eps = float(np.finfo(dtype).eps)
        result = {"cond_": None}
        if self.device == "cuda":
            coef, intercept = self._fit_cuda(X, y, sw, total, eps, result)
        elif self.solver == "gd":
            coef, intercept = self._fit_gd(X, y, sw, total, result)
            result["solver_"], result["rank_"] = "gd", d
        else:
            coef = intercept = None
            shift = None
            passes = 0
            if self.solver in ("normal", "auto"):
                mean, scatter = source.moments()
                passes += 1
                solved = self._solve_gram(total, mean, scatter, eps, result)
                if solved is not None:
                    coef, intercept = solved
                    result["solver_"] = "normal"
                shift = mean
            if coef is None:
                if not self.fit_intercept:
                    shift = np.zeros(d + 1)
                elif shift is None:
                    shift = source.head_mean(_SHIFT_ROWS)
                coef, intercept = self._solve_r(source.r_factor(shift), n_eff, shift, eps,
                                                result)
                passes += 1
                result["solver_"] = "qr"
            result["n_iter_"] = passes
        self.coef_ = np.asarray(coef, dtype=dtype)
        self.intercept_ = dtype.type(intercept)
        self.n_features_in_ = d
        self._fit_feature_names(names)
        if "loss_curve_" not in result and hasattr(self, "loss_curve_"):
            del self.loss_curve_
        for name, value in result.items():
            setattr(self, name, value)
        return self

    def _dask_inputs(self, X, y, sample_weight):
        """Dask ``X``, ``y`` and ``sample_weight`` (or None) aligned for
        :class:`~fusedgrad.models._dask.Passes`, and the fit's dtype; the solvers that
        cannot take them refuse here."""
        if self.device != "cpu":
            raise ValueError(f"device={self.device!r} does not take dask arrays: fit them "
                             "with device='cpu', or pass arrays in memory")
        if self.solver == "gd":
            raise ValueError("solver='gd' would read a dask array once per iteration: use "
                             "solver='auto', 'normal' or 'qr' (one pass each)")
        X, y, sw = _dask.prepare(X, y, sample_weight)
        dtype = _resolve_dtype("dtype", self.dtype)
        if dtype is None:
            dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.dtype(np.float64)
        return X, y, sw, dtype

    def _solve_gram(self, n, mean, scatter, eps, result, qr_fallback=True):
        """Normal equations from ``centered_gram``'s output (``n``: the number of
        samples, or the sum of their weights); ``None`` when 'auto' must use QR
        (never without ``qr_fallback``: then 'auto' is solved as 'normal')."""
        d = scatter.shape[0] - 1
        G = scatter if self.fit_intercept else scatter + n * np.outer(mean, mean)
        A, b = G[:d, :d], G[:d, d]
        As, scale = _scaled(A)
        factor, rcond = _cholesky_rcond(As)
        cond = math.inf if rcond == 0.0 else 1.0 / rcond
        result["cond_"] = cond
        if cond * math.sqrt(eps) < 1.0:
            coef = scale * scipy.linalg.cho_solve(factor, scale * b, check_finite=False)
            result["rank_"] = d
        elif self.solver == "auto" and qr_fallback:
            return None
        elif cond * d * eps < 1.0:
            warn(
                f"solver='normal': X^T X is ill-conditioned (estimated condition number "
                f"{cond:.2e} after scaling): the normal equations may have lost about "
                f"{math.log10(cond):.0f} digits; solver='qr' or 'auto' is accurate"
                + (" (with device='cpu')" if self.device == "cuda" else ""),
                IllConditionedWarning,
            )
            coef = scale * scipy.linalg.cho_solve(factor, scale * b, check_finite=False)
            result["rank_"] = d
        else:
            lam, V = np.linalg.eigh(As)
            lam, V = lam[::-1], V[:, ::-1]
            # Eigenvalues of X^T X (squared singular values of X) are resolved
            # down to about d * eps of the largest.
            z, rank = _eig_solve(lam, V, scale * b, d * eps)
            coef = scale * z
            result["rank_"] = rank
            warn(
                f"solver='normal': X^T X is numerically singular (rank {rank} of {d} after "
                "scaling); returning the minimum-norm solution of the normal equations, "
                "accurate only to about sqrt(eps); solver='qr' or 'auto' is accurate"
                + (" (with device='cpu')" if self.device == "cuda" else ""),
                RankDeficientWarning,
            )
        intercept = mean[d] - mean[:d] @ coef if self.fit_intercept else 0.0
        return coef, intercept

    def _solve_r(self, R, N, shift, eps, result):
        """Least squares from the R factor of ``[1, X - shift, y - shift]`` (without the
        ones column when not ``fit_intercept``) of ``N`` rows (of nonzero weight)."""
        d = shift.shape[0] - 1
        k = 1 if self.fit_intercept else 0
        Rxx = R[k:k + d, k:k + d]
        rxy = R[k:k + d, k + d]
        norms = np.sqrt(np.einsum("ij,ij->j", Rxx, Rxx))
        scale = np.ones(d)
        scale[norms > 0] = 1.0 / norms[norms > 0]
        Rs = Rxx * scale
        sigma = scipy.linalg.svdvals(Rs, check_finite=False) if d else np.zeros(0)
        tol = d * eps
        full = d > 0 and sigma[-1] > tol * sigma[0] and np.all(norms > 0) and N >= d + k
        if full:
            coef = scipy.linalg.solve_triangular(Rxx, rxy, check_finite=False)
            rank = d
        else:
            U, sigma, Vt = np.linalg.svd(Rs)
            z, rank = _truncated_solve(U, sigma, Vt, rxy, tol)
            coef = scale * z
            warn(
                f"X is rank deficient{' after centring' if self.fit_intercept else ''}: "
                f"numerical rank {rank} of {d} features; the minimum-norm solution (in units "
                "of the column norms) is returned",
                RankDeficientWarning,
            )
        result["rank_"] = rank
        if self.fit_intercept:
            if R[0, 0] == 0:
                raise RuntimeError("QR factor has a zero first pivot")  # cannot happen: N >= 1
            means = shift + R[0, 1:] / R[0, 0]
            intercept = means[d] - means[:d] @ coef
        else:
            intercept = 0.0
        return coef, intercept

    def _warn_not_converged(self, relative_norm):
        """The ConvergenceWarning of ``solver='gd'`` (CPU and GPU loops)."""
        warn(
            f"gradient descent stopped at max_iter={self.max_iter} with the gradient norm at "
            f"{relative_norm:.2e} of its start (tol={self.tol}); raise max_iter or use "
            "solver='auto'",
            _sk(ConvergenceWarning),
        )

    def _fit_gd(self, X, y, sw, total, result):
        """Gradient descent on ``w``; with an intercept, ``b = mean(y) - mean(X) w``
        is eliminated exactly (the centred problem), so the step only sees ``X``'s
        spread, not its offset. With weights ``sw`` (sum ``total``) the means and
        the loss are weighted."""
        N, d = X.shape
        dt = X.dtype.type
        mean, scatter = centered_gram(X, y, sample_weight=sw, check_finite=False)
        if not self.fit_intercept:
            scatter = scatter + total * np.outer(mean, mean)
        if isinstance(self.learning_rate, str):
            H = scatter[:d, :d] / total
            lam = scipy.linalg.eigvalsh(H, subset_by_index=[d - 1, d - 1], check_finite=False)[0]
            step = 1.0 / lam if lam > 0 else 1.0
        else:
            step = float(self.learning_rate)
        mean_x, mean_y = mean[:d], mean[d]
        w = np.zeros(d, X.dtype)
        target = np.empty_like(y) if self.fit_intercept else y
        curve = []
        g0 = None
        converged = False
        for _ in range(self.max_iter):
            if self.fit_intercept:
                b = mean_y - mean_x @ w.astype(np.float64)
                np.subtract(y, dt(b), out=target)
            loss, grad = ols_loss_grad(X, target, w, sample_weight=sw, check_finite=False)
            loss = float(loss)
            if not math.isfinite(loss) or not np.all(np.isfinite(grad)):
                raise ValueError(
                    f"gradient descent diverged at iteration {len(curve) + 1} (loss {loss}): "
                    f"learning_rate={self.learning_rate!r} is too large; "
                    "use learning_rate='auto' or a smaller step"
                )
            curve.append(loss)
            gnorm = float(np.linalg.norm(grad.astype(np.float64)))
            if g0 is None:
                g0 = gnorm
            if gnorm <= self.tol * g0:
                converged = True
                break
            w -= dt(step) * grad
        if not converged:
            self._warn_not_converged(gnorm / g0)
        result["n_iter_"] = len(curve)
        result["loss_curve_"] = curve
        intercept = mean_y - mean_x @ w.astype(np.float64) if self.fit_intercept else 0.0
        return w, intercept

    def _fit_cuda(self, X, y, sw, total, eps, result):
        r"""Every solver of ``device='cuda'``; ``X`` and ``y`` are copied to the GPU once.

        With ``fit_intercept`` the device copies are centred in place by a
        kernel (column means in float64, one pass, then a shift by the means
        rounded to X's dtype), so the products see the spread of ``X``, not
        its offset, and no augmented column is formed. With weights ``sw``
        (sum ``total``) the means are weighted and the same kernel multiplies
        row ``i`` of the copies by :math:`\sqrt{n s_i / \sum s}`: the
        unweighted problem on those rows is the weighted one (its Gram matrix
        scaled by ``n / total``, which the normal equations do not see, and
        its mean loss the weighted mean loss). ``'normal'`` and
        ``'auto'``: :func:`fusedgrad.kernels.cuda.gram` of the centred data,
        copied back once, and the ``(d, d)`` solve on the host as on the CPU.
        ``'gd'``: per iteration the fused
        :func:`~fusedgrad.kernels.cuda.ols.loss_grad_device` and one kernel
        that updates ``w`` on the device and returns the loss and the
        gradient's squared norm (two numbers copied back per iteration, for
        ``loss_curve_`` and the stopping rule).
        """
        from fusedgrad.kernels.cuda import _runtime as rt
        from fusedgrad.kernels.cuda import _train
        from fusedgrad.kernels.cuda import gram
        from fusedgrad.kernels.cuda.ols import loss_grad_device

        rt.require()
        cuda = rt.cuda
        N, d = X.shape
        dt = X.dtype.type
        Xd = cuda.to_device(X)
        yd = cuda.to_device(y)
        scale_d = sw_d = None
        if sw is not None:
            sw_d = cuda.to_device(sw)
            scale_d = cuda.to_device(np.sqrt(sw * dt(N / total)))
        if self.fit_intercept:
            mean_d = cuda.device_array(d + 1, np.float64)
            _train.column_means(Xd, yd, mean_d, sw_d, total)
            _train.center(Xd, yd, mean_d, scale_d)
            mean = mean_d.copy_to_host()
        else:
            mean = np.zeros(d + 1)
            if sw is not None:
                _train.center(Xd, yd, cuda.to_device(mean), scale_d)
        scatter = None
        if self.solver != "gd" or isinstance(self.learning_rate, str):
            XtX, Xty = gram(Xd, yd, check_finite=False)
            scatter = np.zeros((d + 1, d + 1))
            scatter[:d, :d] = XtX.copy_to_host()
            scatter[:d, d] = scatter[d, :d] = Xty.copy_to_host()
        if self.solver != "gd":
            coef, intercept = self._solve_gram(N, mean, scatter, eps, result, qr_fallback=False)
            result["solver_"], result["n_iter_"] = "normal", 1
            return coef, intercept

        if isinstance(self.learning_rate, str):
            lam = scipy.linalg.eigvalsh(scatter[:d, :d] / N, subset_by_index=[d - 1, d - 1],
                                        check_finite=False)[0]
            step = 1.0 / lam if lam > 0 else 1.0
        else:
            step = float(self.learning_rate)
        w = rt.zeros(d, X.dtype)
        w_next = cuda.device_array(d, X.dtype)
        grad = cuda.device_array(d, X.dtype)
        loss = cuda.device_array(1, np.float64)
        stats = cuda.device_array(2, np.float64)
        curve = []
        g0 = None
        converged = False
        work = {}  # the gradient's scratch, kept across the iterations
        for _ in range(self.max_iter):
            loss_grad_device(Xd, yd, w, grad, loss, work=work)
            _train.gd_step(w, grad, step, w_next, loss, stats)
            loss_value, sq_norm = stats.copy_to_host()
            loss_value = float(dt(loss_value))
            gnorm = math.sqrt(sq_norm) if sq_norm >= 0 else math.nan
            if not math.isfinite(loss_value) or not math.isfinite(gnorm):
                raise ValueError(
                    f"gradient descent diverged at iteration {len(curve) + 1} (loss "
                    f"{loss_value}): learning_rate={self.learning_rate!r} is too large; "
                    "use learning_rate='auto' or a smaller step"
                )
            curve.append(loss_value)
            if g0 is None:
                g0 = gnorm
            if gnorm <= self.tol * g0:
                converged = True
                break
            w, w_next = w_next, w
        if not converged:
            self._warn_not_converged(gnorm / g0)
        result["n_iter_"] = len(curve)
        result["loss_curve_"] = curve
        result["solver_"], result["rank_"] = "gd", d
        coef = w.copy_to_host()
        intercept = mean[d] - mean[:d] @ coef.astype(np.float64) if self.fit_intercept else 0.0
        return coef, intercept

    # --- predict ----------------------------------------------------------------

    def predict(self, X):
        """Predictions ``X @ coef_ + intercept_``.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features)

        Returns
        -------
        ndarray, shape (n_samples,)
            In X's float dtype (float64 for other numbers). For a dask array
            ``X``, a dask array (lazy, computed block by block).
        """
        return self._predict_any(X, self._predict)

    def _predict(self, X):
        X = self._validate_X(X, reset=False)
        return X @ self.coef_.astype(X.dtype, copy=False) + X.dtype.type(self.intercept_)

    # --- persistence ------------------------------------------------------------

    def save(self, path):
        """Write the fitted model to ``path`` (see :func:`fusedgrad.models.load`)."""
        self._check_is_fitted()
        _persist.save(self, path)

    def _persist_state(self):
        params = self.get_params(deep=False)
        state = {
            "n_features_in_": int(self.n_features_in_),
            "solver_": self.solver_,
            "rank_": int(self.rank_),
            "cond_": None if self.cond_ is None or not math.isfinite(self.cond_)
            else float(self.cond_),
            "cond_is_inf": self.cond_ is not None and not math.isfinite(self.cond_),
        }
        self._persist_feature_names(state)
        state["n_iter_"] = int(self.n_iter_)
        if hasattr(self, "loss_curve_"):
            state["loss_curve_"] = [float(v) for v in self.loss_curve_]
        arrays = {"coef_": self.coef_, "intercept_": np.asarray(self.intercept_)}
        return params, state, arrays

    @classmethod
    def _from_persist_state(cls, params, state, arrays):
        model = cls(**params)
        model._check_params()
        d = state.get("n_features_in_")
        if not _is_int(d) or d < 1:
            raise ValueError(f"n_features_in_ must be a positive integer, got {d!r}")
        coef = _persist.expect_array(arrays, "coef_", (d,), (np.float32, np.float64))
        intercept = _persist.expect_array(arrays, "intercept_", (), coef.dtype)
        extra = set(arrays) - {"coef_", "intercept_"}
        if extra:
            raise ValueError(f"unexpected arrays {sorted(extra)}")
        if not np.all(np.isfinite(coef)) or not np.isfinite(intercept):
            raise ValueError("coef_ or intercept_ holds NaN or infinity")
        solver = state.get("solver_")
        if solver not in ("normal", "qr", "gd"):
            raise ValueError(f"solver_ must be 'normal', 'qr' or 'gd', got {solver!r}")
        rank = state.get("rank_")
        if not _is_int(rank) or not 0 <= rank <= d:
            raise ValueError(f"rank_ must be an integer in [0, {d}], got {rank!r}")
        cond = state.get("cond_")
        if state.get("cond_is_inf"):
            cond = math.inf
        elif cond is not None and not isinstance(cond, numbers.Real):
            raise ValueError(f"cond_ must be a number or null, got {cond!r}")
        model.coef_ = np.array(coef)
        model.intercept_ = coef.dtype.type(intercept)
        model.n_features_in_ = d
        model._restore_feature_names(state)
        model.solver_ = solver
        model.rank_ = rank
        model.cond_ = cond
        n_iter = state.get("n_iter_")
        if not _is_int(n_iter) or n_iter < 1:
            raise ValueError(f"n_iter_ must be a positive integer, got {n_iter!r}")
        model.n_iter_ = n_iter
        if solver == "gd":
            curve = state.get("loss_curve_")
            if (not isinstance(curve, list) or len(curve) != n_iter
                    or not all(_is_real(v) for v in curve)):
                raise ValueError(f"loss_curve_ must be a list of {n_iter} numbers")
            model.loss_curve_ = [float(v) for v in curve]
        return model


def _eig_solve(lam, V, rhs, tol):
    """Minimum-norm solution of ``V diag(lam) V^T z = rhs`` dropping ``lam < tol * lam.max()``."""
    if lam.size == 0 or lam[0] <= 0:
        return np.zeros(V.shape[0]), 0
    rank = int(np.count_nonzero(lam > tol * lam[0]))
    z = V[:, :rank] @ ((V[:, :rank].T @ rhs) / lam[:rank])
    return z, rank

"""Curvature tools against references computed another way, in float64.

References: ``jax.hessian`` materialized and multiplied, central finite
differences of the gradient, ``J^T H_L J`` built from dense Jacobians, numpy's
``eigvalsh`` and the exact trace. Each runs on plain arrays, a dict of arrays
and a Flax NNX MLP (nested ``nnx.State`` params), in float32 and float64.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

import so_opt
from so_opt import curvature
from so_opt._src import curvature as curvature_src

# float32 products carry ~1e-6 relative rounding per operation; the loose
# tolerance covers the accumulation over a few hundred terms.
RTOL = {"float32": 2e-4, "float64": 1e-10}


class _MLP(nnx.Module):
    def __init__(self, dtype, rngs):
        self.hidden = nnx.Linear(5, 6, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(6, 3, dtype=dtype, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def _array_problem(dtype):
    """Softplus regression plus a quartic: a non-quadratic function of a vector."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(9, 7)), dtype)
    y = jnp.asarray(rng.normal(size=9), dtype)
    model_fn = lambda x: a @ x
    output_loss_fn = lambda out: jnp.mean(jax.nn.softplus(out) - y * out)
    loss = lambda x: output_loss_fn(model_fn(x)) + 0.1 * jnp.sum(x**4)
    params = jnp.asarray(rng.normal(size=7), dtype)
    return params, loss, model_fn, output_loss_fn


def _dict_problem(dtype):
    """A one-hidden-layer tanh network with squared error; dict params."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(12, 3)), dtype)
    y = jnp.asarray(rng.normal(size=(12, 2)), dtype)
    params = {
        "w": {"in": jnp.asarray(rng.normal(size=(3, 4)), dtype)},
        "b": jnp.asarray(rng.normal(size=4), dtype),
        "out": jnp.asarray(rng.normal(size=(4, 2)), dtype),
    }
    model_fn = lambda p: jnp.tanh(x @ p["w"]["in"] + p["b"]) @ p["out"]
    output_loss_fn = lambda out: 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))
    return params, lambda p: output_loss_fn(model_fn(p)), model_fn, output_loss_fn


def _nnx_problem(dtype):
    """Softmax cross-entropy of an NNX MLP (params are a nested ``nnx.State``)."""
    # Initialize in float64 and cast, so both dtypes share the same point.
    params = nnx.split(_MLP(jnp.float64, nnx.Rngs(0)))[1]
    graphdef = nnx.split(_MLP(dtype, nnx.Rngs(0)))[0]
    params = otu.tree_cast(params, dtype)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(20, 5)), dtype)
    labels = jnp.asarray(rng.integers(0, 3, size=20))
    model_fn = lambda p: nnx.merge(graphdef, p)(x)
    output_loss_fn = lambda logits: jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    )
    return params, lambda p: output_loss_fn(model_fn(p)), model_fn, output_loss_fn


PROBLEMS = {"array": _array_problem, "dict": _dict_problem, "nnx": _nnx_problem}
DTYPES = ("float32", "float64")


@functools.cache
def _reference(problem):
    """Float64 references of one problem: dense Hessian, J^T H_L J, gradient."""
    params, loss, model_fn, output_loss_fn = PROBLEMS[problem]("float64")
    x, unravel = ravel_pytree(params)
    y, unravel_out = ravel_pytree(model_fn(params))
    flat_model = lambda flat: ravel_pytree(model_fn(unravel(flat)))[0]
    jac = jax.jit(jax.jacfwd(flat_model))(x)
    hess_out = jax.jit(jax.hessian(lambda z: output_loss_fn(unravel_out(z))))(y)
    return {
        "hessian": _dense_hessian(loss, params),
        "ggn": np.asarray(jac.T @ hess_out @ jac),
        "grad": _flat(jax.jit(jax.grad(loss))(params)),
    }


def _dense_hessian(loss, params):
    """Reference: ``jax.hessian`` of the loss on the ravelled params."""
    x, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda flat: loss(unravel(flat))))(x))


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0], np.float64)


def _random_vector(params, seed=3):
    return otu.tree_random_like(jax.random.key(seed), params)


def _assert_close(actual, expected, dtype):
    # Relative to the largest entry: entries near zero carry absolute rounding.
    scale = max(np.max(np.abs(expected)), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=RTOL[dtype] * scale)


@functools.cache
def _computed(problem, dtype):
    """Every so_opt product of one problem, from a single jitted call.

    One compilation per (problem, dtype) keeps the file fast; the tests below
    check the pieces separately.
    """
    params, loss, model_fn, output_loss_fn = PROBLEMS[problem](dtype)
    vector = _random_vector(params)

    @jax.jit
    def compute(p, v):
        grad, hvp_fn = so_opt.linearize_hvp(loss, p)
        ggn_fn = so_opt.linearize_ggn(model_fn, output_loss_fn, p)
        return {
            "hvp": so_opt.hvp(loss, p, v),
            "linearize_hvp": hvp_fn(v),
            "grad": grad,
            "ggn_vp": so_opt.ggn_vp(model_fn, output_loss_fn, p, v),
            "linearize_ggn": ggn_fn(v),
            "hessian_matrix": so_opt.hessian_matrix(loss, p),
        }

    return params, vector, compute(params, vector)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_hvp_matches_dense_hessian(problem, dtype):
    ref = _reference(problem)
    params, vector, out = _computed(problem, dtype)
    expected = ref["hessian"] @ _flat(vector)
    for name in ("hvp", "linearize_hvp"):
        same_tree = jax.tree_util.tree_structure(out[name])
        assert same_tree == jax.tree_util.tree_structure(params)
        assert otu.tree_dtype(out[name], "promote") == jnp.dtype(dtype)
        _assert_close(_flat(out[name]), expected, dtype)
    _assert_close(_flat(out["grad"]), ref["grad"], dtype)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_hvp_matches_central_differences(problem):
    params, vector, out = _computed(problem, "float64")
    loss = PROBLEMS[problem]("float64")[1]
    grad_fn = jax.jit(jax.grad(loss))
    eps = 1e-5
    # (g(x + eps v) - g(x - eps v)) / (2 eps) = H v + O(eps^2 * third derivative).
    plus = grad_fn(otu.tree_add_scale(params, eps, vector))
    minus = grad_fn(otu.tree_add_scale(params, -eps, vector))
    expected = (_flat(plus) - _flat(minus)) / (2 * eps)
    np.testing.assert_allclose(_flat(out["hvp"]), expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_ggn_vp_matches_dense_jacobians(problem, dtype):
    params, vector, out = _computed(problem, dtype)
    expected = _reference(problem)["ggn"] @ _flat(vector)
    for name in ("ggn_vp", "linearize_ggn"):
        assert otu.tree_dtype(out[name], "promote") == jnp.dtype(dtype)
        _assert_close(_flat(out[name]), expected, dtype)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_ggn_is_positive_semidefinite_for_convex_output_loss(problem):
    # Softplus, squared error and softmax cross-entropy are convex outputs.
    ggn = _reference(problem)["ggn"]
    assert np.linalg.eigvalsh(ggn)[0] >= -1e-12 * np.max(np.abs(ggn))
    _, vector, out = _computed(problem, "float64")
    assert float(otu.tree_vdot(vector, out["ggn_vp"])) >= 0


def test_ggn_equals_hessian_for_a_linear_model():
    # J is constant when the model is linear, so H = J^T H_L J exactly.
    params, _, model_fn, output_loss_fn = _array_problem("float64")
    loss = lambda x: output_loss_fn(model_fn(x))
    v = _random_vector(params)
    np.testing.assert_allclose(
        so_opt.ggn_vp(model_fn, output_loss_fn, params, v),
        so_opt.hvp(loss, params, v),
        rtol=1e-12,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_hessian_matrix_matches_jax_hessian(problem, dtype):
    expected = _reference(problem)["hessian"]
    out = _computed(problem, dtype)[2]["hessian_matrix"]
    assert out.shape == expected.shape and out.dtype == jnp.dtype(dtype)
    _assert_close(np.asarray(out, np.float64), expected, dtype)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 5, 7, 10])
def test_hessian_matrix_chunking(chunk_size):
    # k = 7: chunks that divide k or not (shifted last chunk), k itself, > k.
    params, loss, _, _ = _array_problem("float64")
    out = so_opt.hessian_matrix(loss, params, chunk_size=chunk_size)
    expected = _reference("array")["hessian"]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("k", "chunk_size", "expected"),
    [
        (610, 256, (3, 204)),
        (2410, 256, (10, 241)),
        (257, 256, (2, 129)),
        (256, 256, (1, 256)),
        (7, 3, (3, 3)),
        (7, 10, (1, 7)),
        (1, 1, (1, 1)),
    ],
)
def test_hessian_chunks_are_balanced(k, chunk_size, expected):
    num_chunks, rows = curvature_src._balanced_chunks(k, chunk_size)
    assert (num_chunks, rows) == expected
    # Every row is covered, no chunk exceeds the request, and the shifted last
    # chunk redoes fewer rows than there are chunks.
    assert rows <= chunk_size and 0 <= num_chunks * rows - k < num_chunks


def test_linearize_hvp_traces_the_function_once():
    # One linearization serves every product: `fun` runs while linearizing and
    # never again, so each product is a tangent pass only.
    calls = []
    params, loss, _, _ = _array_problem("float64")

    def counted(x):
        calls.append(1)
        return loss(x)

    _, hvp_fn = so_opt.linearize_hvp(counted, params)
    products = [hvp_fn(_random_vector(params, seed)) for seed in range(3)]
    assert len(calls) == 1
    expected = _reference("array")["hessian"]
    for seed, product in enumerate(products):
        np.testing.assert_allclose(
            product, expected @ _flat(_random_vector(params, seed)), rtol=1e-10
        )


def test_hessian_matrix_chunks_bound_peak_memory():
    # XLA's memory plan of the compiled function: smaller chunks, less
    # temporary memory, and below jax.hessian's k simultaneous products.
    params, loss = _wide_problem()
    x, unravel = ravel_pytree(params)
    flat_loss = lambda flat: loss(unravel(flat))

    def temp_bytes(fn):
        stats = jax.jit(fn).lower(x).compile().memory_analysis()
        if stats is None:
            pytest.skip("this backend gives no memory analysis (owner: issue 3)")
        return stats.temp_size_in_bytes

    small, large = (
        temp_bytes(lambda z, c=c: so_opt.hessian_matrix(flat_loss, z, chunk_size=c))
        for c in (8, 64)
    )
    assert small < large < temp_bytes(jax.hessian(flat_loss))


def test_hessian_matrix_mixed_dtypes_promote():
    params = {"a": jnp.ones(2, jnp.float32), "b": jnp.ones(3, jnp.float64)}
    loss = lambda p: jnp.sum(p["a"] ** 2) * jnp.sum(p["b"] ** 3)
    out = so_opt.hessian_matrix(loss, params)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, _dense_hessian(loss, params), rtol=1e-6)


def _wide_problem():
    """A tanh network with 16 hidden units: k = 129, indefinite Hessian."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(40, 6)))
    y = jnp.asarray(rng.normal(size=(40, 1)))
    params = {
        "w": jnp.asarray(rng.normal(size=(6, 16))),
        "b": jnp.asarray(rng.normal(size=16)),
        "out": jnp.asarray(rng.normal(size=(16, 1))),
        "c": jnp.zeros(1),
    }

    def loss(p):
        pred = jnp.tanh(x @ p["w"] + p["b"]) @ p["out"] + p["c"]
        return 0.5 * jnp.mean((pred - y) ** 2)

    return params, loss


@functools.cache
def _wide_spectrum():
    params, loss = _wide_problem()
    return np.linalg.eigvalsh(_dense_hessian(loss, params))


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_hessian_eigenvalues_match_eigvalsh(which):
    # 60 Lanczos steps on k = 129: a Krylov approximation, not a complete
    # tridiagonalization.
    params, loss = _wide_problem()
    exact = _wide_spectrum()
    num = 3
    run = jax.jit(
        lambda p, key: so_opt.hessian_eigenvalues(
            loss, p, num, key, which, num_iterations=60
        )
    )
    out = run(params, jax.random.key(0))
    values, residuals = np.asarray(out.eigenvalues), np.asarray(out.residuals)
    expected = {
        "largest": exact[-num:],
        "smallest": exact[:num],
        "both": np.r_[exact[:num], exact[-num:]],
    }[which]
    assert values.shape == expected.shape and np.all(np.diff(values) >= 0)
    # The extremal eigenvalues converge to 1e-6 relative (the target).
    ends = {"largest": [-1], "smallest": [0], "both": [0, -1]}[which]
    np.testing.assert_allclose(values[ends], expected[ends], rtol=1e-6)
    # Every Ritz value lies within its residual of the spectrum.
    gaps = np.min(np.abs(values[:, None] - exact[None]), axis=1)
    assert np.all(gaps <= residuals + 1e-10 * np.max(np.abs(exact)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_hessian_eigenvalues_nnx(dtype):
    params, loss, _, _ = _nnx_problem(dtype)
    exact = np.linalg.eigvalsh(_reference("nnx")["hessian"])
    run = jax.jit(
        lambda p, key: so_opt.hessian_eigenvalues(loss, p, 2, key, num_iterations=40)
    )
    out = run(params, jax.random.key(1))
    assert out.eigenvalues.dtype == jnp.dtype(dtype)
    # float32: Lanczos loses about sqrt(eps) * ||H|| on clustered ends at worst.
    tol = {"float32": 1e-4, "float64": 1e-8}[dtype] * np.max(np.abs(exact))
    np.testing.assert_allclose(out.eigenvalues, np.r_[exact[:2], exact[-2:]], atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hessian_eigenvalues_plain_array(dtype):
    # k = 7 and 7 steps: a complete tridiagonalization, so both ends are exact
    # up to rounding; float32 carries ~eps * ||H|| / lambda_min ~ 1e-5.
    params, loss, _, _ = _array_problem(dtype)
    exact = np.linalg.eigvalsh(_reference("array")["hessian"])
    run = jax.jit(lambda p, key: so_opt.hessian_eigenvalues(loss, p, 1, key))
    out = run(params, jax.random.key(2))
    assert out.eigenvalues.dtype == jnp.dtype(dtype)
    rtol = {"float32": 1e-4, "float64": 1e-6}[dtype]
    np.testing.assert_allclose(out.eigenvalues, exact[[0, -1]], rtol=rtol)


def test_hessian_eigenvalues_of_a_known_spectrum_with_repeats():
    # H = diag(1, 1, 1, 2, 5, 5): Lanczos meets an invariant subspace and must
    # restart to find the repeated eigenvalues.
    diag = jnp.array([1.0, 1.0, 1.0, 2.0, 5.0, 5.0])
    loss = lambda x: 0.5 * jnp.sum(diag * x**2)
    out = so_opt.hessian_eigenvalues(
        loss, jnp.zeros(6), 3, jax.random.key(0), num_iterations=6
    )
    np.testing.assert_allclose(out.eigenvalues, [1, 1, 1, 2, 5, 5], atol=1e-12)
    assert int(out.num_restarts) >= 1


@pytest.mark.parametrize(
    ("problem", "dtype"),
    [
        ("array", "float32"),
        ("array", "float64"),
        ("dict", "float64"),
        ("nnx", "float32"),
        ("nnx", "float64"),
    ],
)
def test_hessian_trace_within_standard_errors(problem, dtype):
    params, loss, _, _ = PROBLEMS[problem](dtype)
    exact = np.trace(_reference(problem)["hessian"])
    run = jax.jit(lambda p, key: so_opt.hessian_trace(loss, p, key, 200))
    out = run(params, jax.random.key(7))
    assert out.estimate.dtype == jnp.dtype(dtype)
    assert 0 < float(out.standard_error) < abs(exact)
    # Seeded: 4 standard errors is a 6e-5 two-sided chance under normality.
    assert abs(float(out.estimate) - exact) <= 4 * float(out.standard_error)


def test_hessian_trace_is_exact_for_diagonal_hessians():
    # z^T D z = tr D for every Rademacher z, whatever the seed.
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    loss = lambda p: jnp.sum(jnp.exp(p["a"])) + jnp.sum(jnp.cos(p["b"]))
    out = so_opt.hessian_trace(loss, params, jax.random.key(3), 5)
    np.testing.assert_allclose(out.estimate, 3.0 - 4.0, rtol=1e-12)
    assert float(out.standard_error) == 0.0


def test_public_namespaces():
    assert curvature.hvp is so_opt.hvp
    assert so_opt.linalg.lanczos is so_opt.lanczos
    assert so_opt.linalg.truncated_cg is so_opt.truncated_cg


# --- bad input ---------------------------------------------------------------


def _params():
    return {"a": jnp.ones((2, 3)), "b": jnp.ones(4)}


BAD_VECTORS = {
    "structure": ({"a": jnp.ones((2, 3))}, ValueError, "tree structure"),
    "list": ([jnp.ones((2, 3)), jnp.ones(4)], ValueError, "tree structure"),
    "shape": ({"a": jnp.ones((3, 2)), "b": jnp.ones(4)}, ValueError, "shapes"),
    "broadcastable": ({"a": jnp.ones(3), "b": jnp.ones(4)}, ValueError, "shapes"),
    "dtype": (
        {"a": jnp.ones((2, 3), jnp.float32), "b": jnp.ones(4)},
        TypeError,
        "dtypes",
    ),
    "integer": (
        {"a": jnp.ones((2, 3), jnp.int32), "b": jnp.ones(4)},
        TypeError,
        "dtypes",
    ),
    "scalar": ({"a": 1.0, "b": jnp.ones(4)}, ValueError, "shapes"),
}


def _products():
    loss = lambda p: jnp.sum(p["a"] ** 3) + jnp.sum(p["b"] ** 2)
    model_fn = lambda p: jnp.sum(p["a"]) * p["b"]
    output_loss_fn = lambda out: jnp.sum(out**2)
    return {
        "hvp": lambda p, v: so_opt.hvp(loss, p, v),
        "linearize_hvp": lambda p, v: so_opt.linearize_hvp(loss, p)[1](v),
        "ggn_vp": lambda p, v: so_opt.ggn_vp(model_fn, output_loss_fn, p, v),
        "linearize_ggn": lambda p, v: so_opt.linearize_ggn(model_fn, output_loss_fn, p)(
            v
        ),
    }


@pytest.mark.parametrize("product", ["hvp", "linearize_hvp", "ggn_vp", "linearize_ggn"])
@pytest.mark.parametrize("case", BAD_VECTORS)
def test_mismatched_vector_raises(product, case):
    vector, error, words = BAD_VECTORS[case]
    with pytest.raises(error, match=f"`vector` must .*{words}"):
        _products()[product](_params(), vector)
    # The same check runs while tracing under jit.
    with pytest.raises(error, match="`vector`"):
        jax.jit(_products()[product])(_params(), vector)


def test_mismatch_message_names_the_leaf():
    bad = {"a": jnp.ones((2, 3)), "b": jnp.ones(5)}
    with pytest.raises(ValueError) as info:
        so_opt.hvp(lambda p: jnp.sum(p["b"] ** 2), _params(), bad)
    assert "['b']" in str(info.value) and "float64[5]" in str(info.value)


_SUM_OF_SQUARES = lambda out: jnp.sum(out**2)

CURVATURE_CALLS = {
    "hvp": lambda f, p: so_opt.hvp(f, p, p),
    # The function doubles as the model, with a scalar output loss on top.
    "ggn_vp": lambda f, p: so_opt.ggn_vp(f, _SUM_OF_SQUARES, p, p),
    "linearize_ggn": lambda f, p: so_opt.linearize_ggn(f, _SUM_OF_SQUARES, p),
    "linearize_hvp": lambda f, p: so_opt.linearize_hvp(f, p),
    "hessian_matrix": lambda f, p: so_opt.hessian_matrix(f, p),
    "hessian_eigenvalues": lambda f, p: so_opt.hessian_eigenvalues(
        f, p, 1, jax.random.key(0)
    ),
    "hessian_trace": lambda f, p: so_opt.hessian_trace(f, p, jax.random.key(0), 4),
}


@pytest.mark.parametrize("call", CURVATURE_CALLS)
@pytest.mark.parametrize(
    "leaf", [jnp.arange(3), jnp.ones(3, bool), jnp.ones(3, jnp.complex64)]
)
def test_non_float_params_raise(call, leaf):
    params = {"a": jnp.ones(3), "n": leaf}
    with pytest.raises(TypeError, match=f"got a leaf of dtype {leaf.dtype}."):
        CURVATURE_CALLS[call](lambda p: jnp.sum(p["a"] ** 2), params)


@pytest.mark.parametrize("call", CURVATURE_CALLS)
def test_empty_params_raise(call):
    with pytest.raises(ValueError, match="`params` must hold at least one array"):
        CURVATURE_CALLS[call](lambda p: jnp.zeros(()), {})


SCALAR_CALLS = [c for c in CURVATURE_CALLS if "ggn" not in c]


@pytest.mark.parametrize("call", SCALAR_CALLS)
def test_non_scalar_function_raises(call):
    with pytest.raises(ValueError, match=r"`fun` must return a scalar.*\(3,\)"):
        CURVATURE_CALLS[call](lambda x: x**2, jnp.ones(3))


@pytest.mark.parametrize("call", SCALAR_CALLS)
def test_integer_valued_function_raises(call):
    with pytest.raises(TypeError, match="`fun` must return a"):
        CURVATURE_CALLS[call](lambda x: jnp.sum(x > 0), jnp.ones(3))


GGN_CALLS = {
    "ggn_vp": lambda m, loss, x: so_opt.ggn_vp(m, loss, x, x),
    "linearize_ggn": lambda m, loss, x: so_opt.linearize_ggn(m, loss, x)(x),
}


@pytest.mark.parametrize("call", GGN_CALLS)
def test_non_scalar_output_loss_raises(call):
    with pytest.raises(
        ValueError, match=r"`output_loss_fn` must return a scalar.*\(3,\)"
    ):
        GGN_CALLS[call](jnp.sin, lambda y: y**2, jnp.ones(3))
    with pytest.raises(TypeError, match="`output_loss_fn` must return a float"):
        GGN_CALLS[call](jnp.sin, lambda y: jnp.sum(y > 0), jnp.ones(3))


def test_memory_budget_too_small_raises_before_allocating():
    # k = 10^6 float32 would need 4 TB; the check must fail fast, not OOM.
    with pytest.raises(ValueError, match="`memory_budget_bytes` is 1073741824"):
        so_opt.hessian_matrix(lambda x: jnp.sum(x**2), jnp.zeros(10**6, jnp.float32))
    with pytest.raises(ValueError, match=r"needs k\*k\*8 = 800 bytes"):
        so_opt.hessian_matrix(
            lambda x: jnp.sum(x**2), jnp.ones(10), memory_budget_bytes=799
        )
    out = so_opt.hessian_matrix(
        lambda x: jnp.sum(x**2), jnp.ones(10), memory_budget_bytes=800
    )
    np.testing.assert_allclose(out, 2 * np.eye(10))


def test_memory_budget_is_checked_before_tracing_the_function():
    def fun(x):
        raise AssertionError("`fun` was traced before the budget check.")

    with pytest.raises(ValueError, match="`memory_budget_bytes` is 1000"):
        so_opt.hessian_matrix(fun, jnp.ones((4, 4)), memory_budget_bytes=1000)


BAD_ARGUMENTS = {
    "chunk_size": (
        lambda f, x: so_opt.hessian_matrix(f, x, chunk_size=0),
        "`chunk_size` must be an integer >= 1, got 0.",
    ),
    "memory_budget_bytes": (
        lambda f, x: so_opt.hessian_matrix(f, x, memory_budget_bytes=1.5e9),
        "`memory_budget_bytes` must be an integer >= 1, got 1500000000.0.",
    ),
    "which": (
        lambda f, x: so_opt.hessian_eigenvalues(f, x, 1, jax.random.key(0), "top"),
        "`which` must be one of ('both', 'largest', 'smallest'), got 'top'.",
    ),
    "num": (
        lambda f, x: so_opt.hessian_eigenvalues(f, x, 6, jax.random.key(0)),
        "`num` must be at most the number of params 5, got 6.",
    ),
    "num both": (
        lambda f, x: so_opt.hessian_eigenvalues(f, x, 3, jax.random.key(0)),
        "`num` must be at most half the number of params 5 when `which` is "
        "'both', got 3.",
    ),
    "num_iterations": (
        lambda f, x: so_opt.hessian_eigenvalues(
            f, x, 2, jax.random.key(0), num_iterations=3
        ),
        "`num_iterations` must be an integer >= 4, got 3.",
    ),
    "num_samples": (
        lambda f, x: so_opt.hessian_trace(f, x, jax.random.key(0), 1),
        "`num_samples` must be an integer >= 2, got 1.",
    ),
    "batch_size": (
        lambda f, x: so_opt.hessian_trace(f, x, jax.random.key(0), 4, batch_size=0),
        "`batch_size` must be an integer >= 1, got 0.",
    ),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_arguments_raise_full_sentences(case):
    call, message = BAD_ARGUMENTS[case]
    with pytest.raises(ValueError) as info:
        call(lambda x: jnp.sum(x**4), jnp.ones(5))
    assert str(info.value) == message

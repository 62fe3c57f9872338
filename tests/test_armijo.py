"""Tests of `scale_by_armijo` / `armijo_sgd`: properties, rates, safeguards."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
import pytest
from _ls_problems import mlp_data, mlp_loss, mlp_params, quadratic
from hypothesis import given, settings
from hypothesis import strategies as st

import so_opt
from so_opt import StatusCode

SETTINGS = settings(max_examples=8, deadline=None, derandomize=True)
DTYPES = st.sampled_from([jnp.float32, jnp.float64])
# Configurations whose every accepted step must pass the Armijo test.
CONFIGS = {
    "deterministic": dict(),
    "stochastic": dict(c1=0.1, shrink=0.9, reset="grow", growth=2 ** (1 / 10)),
    "goldstein": dict(c1=0.25, condition="goldstein", reset="keep"),
    "momentum": dict(momentum=0.9, nesterov=True, reset="keep"),
}

# Huge first trials into a loss that is NaN or infinite past a radius.
BLOW_UP = {
    f"blow-up-{kind}-{fallback}": dict(
        learning_rate=1e6, max_backtracks=5, fallback_learning_rate=fallback
    )
    for kind in ("nan", "inf")
    for fallback in (None, 1e-8)
}


def slack(value, dtype):
    """Rounding allowance: the test recomputes f in a different fusion."""
    return 20 * jnp.finfo(dtype).eps * max(1.0, abs(float(value)))


@functools.cache
def stepper(name, problem):
    """A jitted step of one configuration on one problem family (cached)."""
    opt = so_opt.armijo_sgd(**{**CONFIGS, **BLOW_UP}[name])

    def step(params, state, data):
        f = functools.partial(problem, data=data)
        value, grad = jax.value_and_grad(f)(params)
        updates, state = opt.update(
            grad, state, params, value=value, grad=grad, value_fn=f
        )
        return updates, state, value, grad

    return opt, jax.jit(step)


def jitted_step(opt, f):
    """``step(x, state) -> (updates, state, value, grad)`` for a fixed ``f``."""

    @jax.jit
    def step(x, state):
        value, grad = jax.value_and_grad(f)(x)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
        return updates, state, value, grad

    return step


def quad_problem(x, data):
    a, b = data
    return 0.5 * x @ (a @ x) - b @ x


def mlp_problem(params, data):
    return mlp_loss(params, *data)


def check_sufficient_decrease(name, problem, params, data, steps):
    """Runs ``steps`` updates; asserts Armijo on every non-zero one."""
    opt, step = stepper(name, problem)
    c1 = CONFIGS[name].get("c1", 1e-4)
    state = opt.init(params)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    for _ in range(steps):
        updates, state, value, grad = step(params, state, data)
        new_params = optax.apply_updates(params, updates)
        new_value = problem(new_params, data)
        bound = value + c1 * otu.tree_vdot(grad, updates)
        assert float(new_value) <= float(bound) + slack(value, dtype)
        assert int(so_opt.status(state)) == StatusCode.RUNNING
        params = new_params
    return params, state


@SETTINGS
@given(seed=st.integers(0, 2**16), dim=st.sampled_from([2, 5]), dtype=DTYPES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sufficient_decrease_quadratic(name, seed, dim, dtype):
    _, x0, a, b = quadratic(seed, dim, 100.0, dtype)
    # Two dimensions only: each (dim, dtype) pair compiles the step once.
    check_sufficient_decrease(name, quad_problem, x0, (a, b), steps=6)


@SETTINGS
@given(seed=st.integers(0, 2**16), dtype=DTYPES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sufficient_decrease_mlp(name, seed, dtype):
    params = mlp_params(seed, dtype)
    check_sufficient_decrease(name, mlp_problem, params, mlp_data(seed, dtype), 6)


def test_goldstein_steps_are_not_too_short():
    f, x0, _, _ = quadratic(3, 4, 10.0, jnp.float64)
    opt = so_opt.armijo_sgd(
        1e-3, 0.25, condition="goldstein", reset="keep", max_learning_rate=100.0
    )
    state, x = opt.init(x0), x0
    step = jitted_step(opt, f)
    for _ in range(5):
        u, state, v, g = step(x, state)
        slope = float(otu.tree_vdot(g, u))
        # Both Goldstein inequalities, for the step actually taken.
        assert float(f(x + u)) <= float(v) + 0.25 * slope + 1e-12
        assert float(f(x + u)) >= float(v) + 0.75 * slope - 1e-12
        x = x + u
    # Expansion was needed: the first trial 1e-3 is far too short here.
    assert float(state[1].learning_rate) > 1e-2


@functools.cache
def blowing_up(kind):
    """A quadratic that is NaN or infinite past a radius (both traced)."""

    def f(x, data):
        a, b, radius = data
        bad = jnp.asarray(jnp.nan if kind == "nan" else jnp.inf, x.dtype)
        return jnp.where(jnp.linalg.norm(x) > radius, bad, quad_problem(x, (a, b)))

    return f


@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("fallback", [None, 1e-8])
@SETTINGS
@given(seed=st.integers(0, 2**16), radius=st.floats(0.5, 3.0), dtype=DTYPES)
def test_loss_blowing_up_past_a_radius_never_gives_non_finite_steps(
    kind, fallback, seed, radius, dtype
):
    _, _, a, b = quadratic(seed, 3, 10.0, dtype)
    data = (a, b, jnp.asarray(radius, dtype))
    x = jnp.zeros(3, dtype)
    opt, step = stepper(f"blow-up-{kind}-{fallback}", blowing_up(kind))
    state = opt.init(x)
    for _ in range(4):
        u, state, _, _ = step(x, state, data)
        assert bool(jnp.all(jnp.isfinite(u)))
        x = optax.apply_updates(x, u)
        assert bool(jnp.all(jnp.isfinite(x)))
        assert bool(jnp.isfinite(blowing_up(kind)(x, data)))


@pytest.mark.parametrize("condition_number", [10.0, 100.0])
@pytest.mark.parametrize("c1", [1e-4, 0.3, 0.45])
def test_linear_rate_matches_theory(condition_number, c1):
    # For f = 0.5 x'Ax with mu I <= A <= L I, every accepted step has
    # eta >= eta_min = min(eta_0, 2 shrink (1 - c1) / L), and
    # f(x+) <= f(x) - c1 eta |g|^2 with |g|^2 >= 2 mu f(x) gives
    # f(x+) <= (1 - 2 c1 mu eta_min) f(x).
    shrink, eta0 = 0.5, 1.0
    mu, big_l = 1.0, condition_number
    f, x, a, b = quadratic(7, 8, condition_number, jnp.float64)
    x_star = jnp.linalg.solve(a, b)
    gap = lambda x: float(f(x) - f(x_star))
    opt = so_opt.armijo_sgd(eta0, c1, shrink)
    state, step = opt.init(x), jitted_step(opt, f)
    eta_min = min(eta0, 2 * shrink * (1 - c1) / big_l)
    bound = 1 - 2 * c1 * mu * eta_min
    ratios = []
    for _ in range(25):
        u, state, _, _ = step(x, state)
        before, x = gap(x), x + u
        if before < 1e-20:
            break
        ratios.append(gap(x) / before)
    assert max(ratios) <= bound + 1e-12
    # The classical worst case of a fixed step 1/L is 1 - mu/L per step; the
    # measured mean rate must not be worse than the Armijo bound allows.
    mean_rate = math.exp(np.mean(np.log(np.maximum(ratios, 1e-300))))
    assert mean_rate <= bound


def test_reset_rules_choose_the_first_trial():
    # f = 2.5 |x|^2: the trials 1 and 0.5 fail, 0.25 passes and lands at
    # -x/4, not at the minimum (where any trial would pass), so the second
    # search repeats the pattern from wherever its reset rule starts it.
    f = lambda x: 2.5 * jnp.sum(x**2)
    expected = {"max": [3, 3], "keep": [3, 1], "grow": [3, 2]}
    for reset, trials in expected.items():
        opt = so_opt.armijo_sgd(1.0, reset=reset, growth=2.0)
        x = jnp.ones(2, jnp.float64)
        state = opt.init(x)
        seen = []
        for _ in range(2):
            v, g = jax.value_and_grad(f)(x)
            u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
            seen.append(int(state[1].num_trials))
            x = x + u
        assert seen == trials, reset
    # The bound caps growth: "grow" never tries more than max_learning_rate.
    opt = so_opt.armijo_sgd(0.1, reset="grow", growth=10.0, max_learning_rate=0.2)
    x = jnp.ones(2)
    state = opt.init(x)
    f = lambda x: 1e-3 * jnp.sum(x**2)
    for _ in range(3):
        v, g = jax.value_and_grad(f)(x)
        u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
        x = x + u
    assert float(state[1].learning_rate) == pytest.approx(0.2)


def test_uphill_direction_falls_back_to_the_gradient():
    f = lambda x: jnp.sum((x - 1.0) ** 2)
    x = jnp.zeros(2)
    v, g = jax.value_and_grad(f)(x)
    opt = so_opt.scale_by_armijo()
    state = opt.init(x)
    # Pass +grad as the direction: uphill.
    u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
    assert bool(state.direction_reset)
    np.testing.assert_allclose(u, -float(state.learning_rate) * g)
    assert float(f(x + u)) < float(v)


def test_independent_batch_evaluates_its_own_reference():
    f_grad = lambda x: jnp.sum((x - 1.0) ** 2)
    f_search = lambda x: jnp.sum((x - 1.2) ** 2) + 5.0
    x = jnp.zeros(2)
    g = jax.grad(f_grad)(x)
    opt = so_opt.armijo_sgd(independent_batch=True)
    state = opt.init(x)
    # No `value`: the reference comes from the search batch itself.
    u, state = opt.update(g, state, x, grad=g, value_fn=f_search)
    assert float(f_search(x + u)) <= float(f_search(x)) - 1e-4 * float(g @ -u) * 0
    assert int(so_opt.costs(state).value_evals) == int(state[1].num_trials)
    assert int(state[1].num_trials) >= 2


def test_has_aux_gives_the_same_steps():
    f = lambda x: jnp.sum(jnp.cos(x) + 0.1 * x**2)
    f_aux = lambda x: (f(x), {"norm": jnp.linalg.norm(x)})
    x = jnp.arange(3.0)
    v, g = jax.value_and_grad(f)(x)
    plain = so_opt.armijo_sgd()
    aux = so_opt.armijo_sgd(has_aux=True)
    u1, _ = plain.update(g, plain.init(x), x, value=v, grad=g, value_fn=f)
    u2, _ = aux.update(g, aux.init(x), x, value=v, grad=g, value_fn=f_aux)
    np.testing.assert_array_equal(u1, u2)


def test_fallback_is_checked_and_failure_is_reported():
    # Only moves shorter than 1e-3 (steps under 5e-4 along -2) lower this loss.
    f = lambda x: jnp.sum(x**2) + 1e4 * jnp.sum(jnp.maximum(jnp.abs(x - 1) - 1e-3, 0))
    x = jnp.ones(1)
    v, g = jax.value_and_grad(f)(x)
    opt = so_opt.armijo_sgd(1.0, max_backtracks=2, fallback_learning_rate=1e-5)
    u, state = opt.update(g, opt.init(x), x, value=v, grad=g, value_fn=f)
    assert bool(state[1].used_fallback)
    assert int(so_opt.status(state)) == StatusCode.RUNNING
    assert float(f(x + u)) < float(v)
    assert int(state[1].num_trials) == 4

    # A loss that rises in every direction: no step, zero update, status.
    g_flat = lambda x: jnp.where(jnp.all(x == 1.0), 0.0, 1.0) + 0.0 * jnp.sum(x)
    u, state = opt.update(g, opt.init(x), x, value=0.0, grad=g, value_fn=g_flat)
    np.testing.assert_array_equal(u, jnp.zeros(1))
    assert int(so_opt.status(state)) == StatusCode.LINE_SEARCH_FAILED
    assert not bool(state[1].used_fallback)


# Every search variant, with and without the fallback: the status is read from
# the loop's trial count in the Armijo path and computed apart in Goldstein's.
NON_FINITE_CONFIGS = {
    **CONFIGS,
    "fallback": dict(fallback_learning_rate=1e-6),
    "goldstein-fallback": dict(condition="goldstein", fallback_learning_rate=1e-6),
}


@pytest.mark.parametrize("name", sorted(NON_FINITE_CONFIGS))
@pytest.mark.parametrize(
    ("value", "grad"),
    [(2.0, [jnp.nan, 1.0]), (2.0, [jnp.inf, 1.0]), (jnp.inf, [1.0, 1.0])],
    ids=["nan-grad", "inf-grad", "inf-value"],
)
def test_non_finite_input_gives_zero_update_and_status(name, value, grad):
    f = lambda x: jnp.sum(x**2)
    x = jnp.ones(2)
    g = jnp.array(grad)
    opt = so_opt.armijo_sgd(**NON_FINITE_CONFIGS[name])
    u, state = jax.jit(lambda s: opt.update(g, s, x, value=value, grad=g, value_fn=f))(
        opt.init(x)
    )
    np.testing.assert_array_equal(u, jnp.zeros(2))
    assert int(so_opt.status(state)) == StatusCode.NON_FINITE
    assert int(so_opt.costs(state).value_evals) == 0
    assert int(state[-1].num_trials) == 0
    assert float(state[-1].learning_rate) == 0.0


def test_state_holds_no_flag_that_cannot_change():
    # On a tiny problem each state leaf costs about a microsecond of dispatch
    # per jitted step, so flags fixed by the configuration are None.
    x = jnp.ones(2)
    plain = so_opt.armijo_sgd().init(x)[-1]
    assert plain.direction_reset is None and plain.used_fallback is None
    # learning_rate, num_trials, the cost counters (one vector), the status.
    assert len(jax.tree_util.tree_leaves(plain)) == 4
    full = so_opt.armijo_sgd(momentum=0.5, fallback_learning_rate=1e-6).init(x)[-1]
    assert not bool(full.direction_reset) and not bool(full.used_fallback)
    assert len(jax.tree_util.tree_leaves(full)) == 6


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_jitted_step_compiles_once_and_keeps_dtypes(name, dtype):
    opt = so_opt.armijo_sgd(**CONFIGS[name])
    f = lambda p: mlp_problem(p, mlp_data(0, dtype))
    params = mlp_params(0, dtype)
    state = opt.init(params)
    dtypes0 = [x.dtype for x in jax.tree_util.tree_leaves(state)]

    @jax.jit
    def step(params, state):
        v, g = jax.value_and_grad(f)(params)
        u, state = opt.update(g, state, params, value=v, grad=g, value_fn=f)
        return optax.apply_updates(params, u), state

    total = 0
    for _ in range(4):
        params, state = step(params, state)
        total += int(state[-1].num_trials)
    assert step._cache_size() == 1
    assert [x.dtype for x in jax.tree_util.tree_leaves(state)] == dtypes0
    assert all(x.dtype == dtype for x in jax.tree_util.tree_leaves(params))
    assert int(so_opt.costs(state).value_evals) == total


ERRORS = [
    (dict(c1=0.0), r"`c1` must be in \(0.0, 1.0\), got 0.0\."),
    (dict(c1=1.5), r"`c1` must be in \(0.0, 1.0\), got 1.5\."),
    (dict(c1=0.6, condition="goldstein"), r"`c1` must be in \(0.0, 0.5\), got 0.6\."),
    (dict(shrink=1.0), r"`shrink` must be in \(0.0, 1.0\), got 1.0\."),
    (dict(shrink=-0.5), r"`shrink` must be in \(0.0, 1.0\), got -0.5\."),
    (dict(learning_rate=0.0), r"`learning_rate` must be > 0, got 0.0\."),
    (dict(learning_rate=-1.0), r"`learning_rate` must be > 0, got -1.0\."),
    (dict(max_backtracks=-1), r"`max_backtracks` must be an integer >= 0, got -1\."),
    (dict(reset="sometimes"), r"`reset` must be one of 'max', 'keep', 'grow', got"),
    (dict(growth=0.5), r"`growth` must be >= 1, got 0.5\."),
    (dict(max_learning_rate=0.5), r"`max_learning_rate` must be >= `learning_rate`"),
    (dict(fallback_learning_rate=0.0), r"`fallback_learning_rate` must be > 0, got"),
    (dict(condition="wolfe"), r"`condition` must be one of 'armijo', 'goldstein'"),
    (dict(momentum=1.0), r"`momentum` must be in \[0, 1\), got 1.0\."),
]


@pytest.mark.parametrize(("kwargs", "message"), ERRORS)
def test_impossible_hyperparameters_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        so_opt.armijo_sgd(**kwargs)
    text = str(info.value)
    assert text.endswith(".") and "`" in text


def test_missing_extra_argument_is_named():
    opt = so_opt.armijo_sgd()
    x = jnp.ones(2)
    with pytest.raises(TypeError, match="`value_fn=`"):
        opt.update(x, opt.init(x), x, value=1.0, grad=x)


def test_rate_given_as_a_string_or_infinite_is_refused():
    with pytest.raises(TypeError, match=r"`learning_rate` must be a real number"):
        so_opt.armijo_sgd(learning_rate="0.1")
    with pytest.raises(ValueError, match=r"`learning_rate` must be finite and > 0"):
        so_opt.armijo_sgd(learning_rate=float("inf"))


@pytest.mark.parametrize("name", ["growth", "momentum"])
def test_growth_and_momentum_given_as_strings_are_refused(name):
    with pytest.raises(TypeError, match=rf"`{name}` must be a real number, got '2'"):
        so_opt.armijo_sgd(**{name: "2"})


def test_trusted_direction_changed_by_an_earlier_transform_is_not_searched_uphill():
    # Weight decay before armijo_sgd turns the gradient into an ascent
    # direction here; the search must refuse it instead of accepting a rise.
    fun = lambda p: 1e-3 * jnp.sum((p - 5.0) ** 2)
    opt = optax.chain(optax.add_decayed_weights(10.0), so_opt.armijo_sgd())
    # In float32 the search used to end on a rise of about 1e-7 in the loss.
    params = jnp.array([1.0], jnp.float32)
    value, grad = jax.value_and_grad(fun)(params)
    updates, state = opt.update(
        grad, opt.init(params), params, value=value, grad=grad, value_fn=fun
    )
    np.testing.assert_array_equal(updates, [0.0])
    assert int(so_opt.status(state)) == so_opt.StatusCode.LINE_SEARCH_FAILED
    assert int(so_opt.costs(state).value_evals) == 0  # no trial spent uphill
    # Alone, the same search descends.
    alone = so_opt.armijo_sgd()
    updates, state = alone.update(
        grad, alone.init(params), params, value=value, grad=grad, value_fn=fun
    )
    assert float(fun(params + updates)) < float(value)
    assert int(so_opt.status(state)) == so_opt.StatusCode.RUNNING


@pytest.mark.parametrize("name", ["independent_batch", "has_aux", "nesterov"])
def test_flags_must_be_bools(name):
    with pytest.raises(TypeError, match=f"`{name}` must be True or False"):
        so_opt.armijo_sgd(**{name: "no"})

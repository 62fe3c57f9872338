"""Tests of the XLA compile options `so_opt.minimize` picks for an optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import so_opt
from so_opt import problems
from so_opt._src import compile_options


def test_lbfgs_is_compiled_for_latency_and_others_with_xla_defaults():
    latency = compile_options.freeze(compile_options.LATENCY_OPTIONS)
    assert compile_options.supported(latency)  # the pinned jaxlib has the option
    for marked in (so_opt.lbfgs(), so_opt.bfgs(), so_opt.newton()):
        assert compile_options.for_optimizer(marked, None) == latency
    assert compile_options.for_optimizer(optax.lbfgs(), None) == ()
    assert (
        compile_options.for_optimizer(so_opt.hessian_free(curvature="hessian"), None)
        == ()
    )
    # The caller's choice wins, an empty mapping included.
    assert compile_options.for_optimizer(so_opt.lbfgs(), {}) == ()


def test_the_cpu_option_is_chosen_only_for_params_on_the_cpu(monkeypatch):
    latency = compile_options.freeze(compile_options.LATENCY_OPTIONS)
    opt = so_opt.lbfgs()
    assert compile_options.for_optimizer(opt, None, jnp.zeros(2)) == latency
    assert compile_options.for_optimizer(opt, None, np.zeros(2)) == latency
    # numpy params go to the default backend: elsewhere, XLA's own defaults.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert compile_options.for_optimizer(opt, None, np.zeros(2)) == ()
    assert compile_options.for_optimizer(opt, None, jnp.zeros(2)) == latency


def test_lbfgs_stays_an_optax_transformation():
    opt = so_opt.lbfgs()
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    # Chaining keeps working; the chain is compiled with XLA's defaults.
    chained = optax.chain(optax.identity(), opt)
    assert compile_options.for_optimizer(chained, None) == ()


def test_the_scheduler_changes_the_order_of_kernels_not_the_numbers():
    p = problems.breast_cancer_logreg(dtype="float32")
    train = p.train
    fun = lambda params: p.loss(params, train)
    opt = so_opt.lbfgs()
    tuned = so_opt.minimize(fun, p.init_params(0), opt, gtol=1e-5)
    plain = so_opt.minimize(fun, p.init_params(0), opt, gtol=1e-5, compiler_options={})
    assert int(tuned.status) == int(plain.status) == so_opt.StatusCode.CONVERGED
    assert int(tuned.num_steps) == int(plain.num_steps)
    jax.tree.map(np.testing.assert_array_equal, tuned.params, plain.params)


def test_options_given_by_the_caller_reach_xla():
    # An option XLA does not know is rejected by XLA itself, naming it.
    with pytest.raises(Exception, match="no_such_xla_option"):
        so_opt.minimize(
            lambda x: jnp.sum(x**2),
            jnp.ones(2),
            so_opt.lbfgs(),
            compiler_options={"no_such_xla_option": True},
        )


@pytest.mark.parametrize(
    "options, match",
    [
        ("fast", r"`compiler_options` must be a mapping"),
        ({1: True}, r"`compiler_options` keys must be strings, got 1"),
        ({"xla_cpu_ftz": [1]}, r"`compiler_options\['xla_cpu_ftz'\]` must be a Python"),
        ({"xla_cpu_ftz": np.bool_(True)}, r"must be a Python str.*got numpy\.bool"),
        ({"xla_cpu_ftz": np.int64(1)}, r"got numpy\.int64"),
    ],
)
def test_bad_compiler_options_name_the_argument(options, match):
    with pytest.raises(TypeError, match=match):
        so_opt.minimize(
            lambda x: jnp.sum(x**2),
            jnp.ones(2),
            so_opt.lbfgs(),
            compiler_options=options,
        )


def test_an_option_this_jaxlib_lacks_falls_back_to_the_defaults():
    assert not compile_options.supported((("no_such_xla_option", True),))


def test_inside_jit_and_vmap_the_outer_program_decides():
    fun = lambda x: jnp.sum((x - 1.0) ** 2)
    run = lambda x: so_opt.minimize(fun, x, so_opt.lbfgs(), gtol=1e-8).params
    np.testing.assert_allclose(jax.jit(run)(jnp.zeros(2)), [1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(jax.vmap(run)(jnp.zeros((3, 2))), 1.0, atol=1e-6)
    constant = jnp.zeros(2)  # traced inside jit even though the params are not
    np.testing.assert_allclose(jax.jit(lambda: run(constant))(), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="pass them to the outermost `jax.jit`"):
        jax.jit(
            lambda x: (
                so_opt.minimize(
                    fun, x, so_opt.lbfgs(), compiler_options={"xla_cpu_ftz": True}
                ).params
            )
        )(jnp.zeros(2))


def test_true_and_one_are_different_options_whatever_ran_before():
    # Equal in Python, different to XLA: a cache keyed on the options must not
    # hand the program compiled for one to a call with the other.
    fun = lambda x: jnp.sum((x - 1.0) ** 2)
    opt = so_opt.lbfgs()
    call = lambda v: so_opt.minimize(
        fun, jnp.zeros(2), opt, compiler_options={"xla_cpu_ftz": v}
    )
    assert compile_options.freeze({"k": True}) != compile_options.freeze({"k": 1})
    for _ in range(2):
        np.testing.assert_allclose(call(True).params, 1.0, atol=1e-6)
        with pytest.raises(Exception, match="xla_cpu_ftz"):
            call(1)

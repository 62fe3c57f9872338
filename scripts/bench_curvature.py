"""Benchmark of so_opt's curvature products and dense Hessian on the digits MLP.

Prints, per hidden width of the digits MLP (full training batch, float32):
  * time of the loss, the gradient, ``so_opt.hvp``, a bare
    ``jax.jvp(jax.grad(f))`` and ``so_opt.ggn_vp``, each as a ratio to the
    gradient (targets: HVP <= 2.5, so_opt.hvp / bare <= 1.10, GGN <= 2);
  * ``so_opt.hessian_matrix`` against ``jax.hessian``: time and peak memory
    (XLA's compiled ``memory_analysis``: arguments + outputs + temporaries);
  * 10 curvature products at one point, one after another as in CG: one
    ``jax.linearize`` then 10 tangent passes, against 10 independent products
    (and so_opt's ``linearize_hvp`` / ``linearize_ggn``).

Every function is jitted and warmed up; candidates are interleaved within each
repeat and the median over repeats is reported, so drifting load on a shared
machine hits all candidates alike.

Usage:
  .venv/bin/python scripts/bench_curvature.py [--repeats 15] [--widths 32 128 512]
"""

from __future__ import annotations

import os

# One BLAS thread so that numpy/scipy do not fight XLA's own thread pool;
# must be set before numpy or jax is imported.
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import optax.tree_utils as otu  # noqa: E402

import so_opt  # noqa: E402
from so_opt import problems  # noqa: E402

NUM_PRODUCTS = 10


def _block(tree):
    return jax.block_until_ready(tree)


def time_interleaved(candidates, repeats, min_seconds=0.02):
    """Median seconds per call of each candidate, interleaved over repeats.

    Each candidate is a zero-argument callable (a jitted function with its
    arguments bound). Calls are batched so that one timing lasts at least
    ``min_seconds``, which keeps timer resolution out of the figures.
    """
    inner = {}
    for name, fn in candidates.items():
        _block(fn())  # compile
        _block(fn())  # warm up
        start = time.perf_counter()
        _block(fn())
        once = time.perf_counter() - start
        inner[name] = max(1, int(min_seconds / max(once, 1e-7)))
    samples = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            for _ in range(inner[name]):
                out = fn()
            _block(out)
            samples[name].append((time.perf_counter() - start) / inner[name])
    return {name: statistics.median(s) for name, s in samples.items()}


def peak_bytes(jitted, *args):
    """Peak memory XLA plans for one call: arguments + outputs + temporaries."""
    stats = jitted.lower(*args).compile().memory_analysis()
    return (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def make_problem(width, dtype):
    problem = problems.digits_mlp(hidden=(width,), dtype=dtype)
    params = problem.init_params(0)
    batch = problem.train
    loss = lambda p: problem.loss(p, batch)
    model_fn = lambda p: problem.model_fn(p, batch)
    output_loss_fn = lambda out: problem.output_loss_fn(out, batch)
    return params, loss, model_fn, output_loss_fn


def bench_products(width, dtype, repeats):
    params, loss, model_fn, output_loss_fn = make_problem(width, dtype)
    vector = otu.tree_random_like(jax.random.key(1), params)
    bare = jax.jit(lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1])
    fns = {
        "loss": (jax.jit(loss), (params,)),
        "grad": (jax.jit(jax.grad(loss)), (params,)),
        "hvp": (jax.jit(lambda p, v: so_opt.hvp(loss, p, v)), (params, vector)),
        "bare jvp(grad)": (bare, (params, vector)),
        "ggn_vp": (
            jax.jit(lambda p, v: so_opt.ggn_vp(model_fn, output_loss_fn, p, v)),
            (params, vector),
        ),
    }
    candidates = {n: (lambda f=f, a=a: f(*a)) for n, (f, a) in fns.items()}
    times = time_interleaved(candidates, repeats)
    return otu.tree_size(params), times


def bench_repeated(width, dtype, repeats):
    """10 sequential products at one point: linearized once vs independent.

    "linearized" stores the residuals of one ``jax.linearize`` and replays the
    tangent pass; "independent" reruns forward-over-reverse each time. so_opt's
    ``linearize_hvp`` / ``linearize_ggn`` are timed too: they use the winner.
    """
    params, loss, model_fn, output_loss_fn = make_problem(width, dtype)
    keys = jax.random.split(jax.random.key(2), NUM_PRODUCTS)
    vectors = jax.vmap(lambda k: otu.tree_random_like(k, params))(keys)

    def hvp_independent(p, vs):
        return jax.lax.map(lambda v: jax.jvp(jax.grad(loss), (p,), (v,))[1], vs)

    def hvp_linearized(p, vs):
        _, hvp_fn = jax.linearize(jax.grad(loss), p)
        return jax.lax.map(hvp_fn, vs)

    def hvp_so_opt(p, vs):
        return jax.lax.map(so_opt.linearize_hvp(loss, p)[1], vs)

    def ggn_independent(p, vs):
        ggn = lambda v: so_opt.ggn_vp(model_fn, output_loss_fn, p, v)
        return jax.lax.map(ggn, vs)

    def ggn_so_opt(p, vs):
        return jax.lax.map(so_opt.linearize_ggn(model_fn, output_loss_fn, p), vs)

    fns = {
        "hvp independent": hvp_independent,
        "hvp linearized": hvp_linearized,
        "so_opt.linearize_hvp": hvp_so_opt,
        "ggn independent": ggn_independent,
        "so_opt.linearize_ggn": ggn_so_opt,
    }
    jitted = {n: jax.jit(f) for n, f in fns.items()}
    candidates = {n: (lambda f=f: f(params, vectors)) for n, f in jitted.items()}
    return time_interleaved(candidates, repeats)


def bench_dense(width, dtype, repeats):
    params, loss, _, _ = make_problem(width, dtype)
    fns = {
        "so_opt.hessian_matrix": jax.jit(lambda p: so_opt.hessian_matrix(loss, p)),
        "jax.hessian": jax.jit(
            lambda p: jax.flatten_util.ravel_pytree(jax.hessian(loss)(p))[0]
        ),
    }
    memory = {n: peak_bytes(f, params) for n, f in fns.items()}
    candidates = {n: (lambda f=f: f(params)) for n, f in fns.items()}
    times = time_interleaved(candidates, max(3, repeats // 3), min_seconds=0.0)
    return otu.tree_size(params), times, memory


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--dense-widths", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    print(
        f"# jax {jax.__version__}, {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"dtype {args.dtype}, median of {args.repeats} interleaved repeats"
    )
    print("\n## Products on the full digits training batch (ratio to gradient)\n")
    print("| width | k | grad ms | loss | hvp | bare jvp(grad) | hvp/bare | ggn_vp |")
    print("|---|---|---|---|---|---|---|---|")
    for width in args.widths:
        k, t = bench_products(width, args.dtype, args.repeats)
        g = t["grad"]
        print(
            f"| {width} | {k} | {1e3 * g:.3f} | {t['loss'] / g:.2f} | "
            f"{t['hvp'] / g:.2f} | {t['bare jvp(grad)'] / g:.2f} | "
            f"{t['hvp'] / t['bare jvp(grad)']:.3f} | {t['ggn_vp'] / g:.2f} |",
            flush=True,
        )

    print(f"\n## {NUM_PRODUCTS} sequential products at one point (ms)\n")
    names = [
        "hvp independent",
        "hvp linearized",
        "so_opt.linearize_hvp",
        "ggn independent",
        "so_opt.linearize_ggn",
    ]
    print("| width | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for width in args.widths:
        t = bench_repeated(width, args.dtype, args.repeats)
        cells = " | ".join(f"{1e3 * t[n]:.2f}" for n in names)
        print(f"| {width} | {cells} |", flush=True)

    print("\n## Dense Hessian (time ms; peak MiB from compiled memory_analysis)\n")
    print("| width | k | hessian_matrix ms | jax.hessian ms | ratio | ", end="")
    print("hessian_matrix MiB | jax.hessian MiB |")
    print("|---|---|---|---|---|---|---|")
    for width in args.dense_widths:
        k, t, mem = bench_dense(width, args.dtype, args.repeats)
        ours, ref = t["so_opt.hessian_matrix"], t["jax.hessian"]
        print(
            f"| {width} | {k} | {1e3 * ours:.1f} | {1e3 * ref:.1f} | "
            f"{ours / ref:.2f} | {mem['so_opt.hessian_matrix'] / 2**20:.1f} | "
            f"{mem['jax.hessian'] / 2**20:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

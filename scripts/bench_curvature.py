"""Benchmark of so_opt's curvature products and dense Hessian on the digits MLP.

Prints, per hidden width of the digits MLP (full training batch, float32):
  * time of the loss, the gradient, ``so_opt.hvp``, a bare
    ``jax.jvp(jax.grad(f))`` and ``so_opt.ggn_vp``, each as a ratio to the
    gradient (targets: HVP <= 2.5, so_opt.hvp / bare <= 1.10, GGN <= 2), with
    the same ratios in floating-point operations from XLA's cost analysis of
    the compiled programs (immune to machine load), and whether ``so_opt.hvp``
    lowers to the very program the bare expression lowers to;
  * 10 steps of so_opt's truncated CG at one point on the damped curvature,
    warm-started as in ``hessian_free`` (11 products), with the products
    linearized once (``so_opt.linearize_hvp`` and ``so_opt.linearize_ggn``)
    against independent products (a fresh ``jax.jvp(jax.grad(f))`` or
    ``so_opt.ggn_vp`` per product), with the flops and peak memory of the
    compiled solves and the matrix products XLA left inside the CG loop;
  * ``so_opt.hessian_matrix`` against ``jax.hessian`` on the flattened params:
    time and peak memory (XLA's compiled ``memory_analysis``: arguments +
    outputs + temporaries - aliased).

Every function is jitted and warmed up; candidates are interleaved within each
repeat, in alternating order, and the median over repeats is reported, so
drifting load on a shared machine hits all candidates alike.

Usage:
  OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/bench_curvature.py \
      [--repeats 21] [--widths 32 128 512] [--dense-widths 8 16 32]
"""

from __future__ import annotations

import os

# One BLAS thread so that numpy/scipy do not fight XLA's own thread pool;
# must be set before numpy or jax is imported.
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax.tree_utils as otu  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import so_opt  # noqa: E402
from so_opt import problems  # noqa: E402

CG_STEPS = 10
# Added to the curvature in the CG runs so that the operator is positive
# definite and CG takes all CG_STEPS steps (checked), as damped Hessian-free
# does; the Hessian of the MLP has small negative eigenvalues.
CG_DAMPING = 1.0
# Warm start x0 = WARM_START_SCALE * b: small enough that the quadratic model
# is negative there, so CG keeps it (it drops warm starts worse than zero).
WARM_START_SCALE = 0.01


def _block(tree):
    return jax.block_until_ready(tree)


def time_interleaved(candidates, repeats, min_seconds=0.02):
    """Median seconds per call of each candidate, interleaved over repeats.

    Each candidate is a zero-argument callable (a jitted function with its
    arguments bound). Calls are batched so that one timing lasts at least
    ``min_seconds``, which keeps timer resolution out of the figures; the
    order of the candidates alternates between repeats.
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
    names = list(candidates)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            fn = candidates[name]
            start = time.perf_counter()
            for _ in range(inner[name]):
                out = fn()
            _block(out)
            samples[name].append((time.perf_counter() - start) / inner[name])
    return {name: statistics.median(s) for name, s in samples.items()}


def peak_bytes(compiled):
    """Peak memory XLA plans for one call: arguments + outputs + temporaries."""
    stats = compiled.memory_analysis()
    return (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def flops(compiled):
    """Floating-point operations of one call, from XLA's cost analysis."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per device
        analysis = analysis[0]
    return float(analysis["flops"])


def loop_body_dots(compiled):
    """Matrix products inside the compiled while loop(s), callees included.

    XLA hoists loop-invariant work out of a while loop; when the forward and
    backward passes of the primal are hoisted, an independent product costs
    no more inside CG than a replayed linearization. Returns None when the
    HLO text cannot be parsed (its format is not a stable interface).
    """
    text = compiled.as_text()
    computations = {}
    for block in re.split(r"\n(?=\S)", text):
        words = block.split(None, 2)
        if words:
            name = words[1] if words[0] == "ENTRY" and len(words) > 1 else words[0]
            computations[name.lstrip("%")] = block
    bodies = re.findall(r"\bbody=%?([\w.\-]+)", text)
    if not bodies:
        return None
    seen = set()

    def count(name):
        block = computations.get(name, "")
        total = len(re.findall(r"\bdot\(", block))
        for callee in re.findall(
            r"(?:calls|to_apply|body|condition|branch_computations)=\{?%?([\w.\-]+)",
            block,
        ):
            if callee not in seen:
                seen.add(callee)
                total += count(callee)
        return total

    return sum(count(body) for body in bodies)


def make_problem(width, dtype):
    problem = problems.digits_mlp(hidden=(width,), dtype=dtype)
    params = problem.init_params(0)
    batch = problem.train
    loss = lambda p: problem.loss(p, batch)
    model_fn = lambda p: problem.model_fn(p, batch)
    output_loss_fn = lambda out: problem.output_loss_fn(out, batch)
    return params, loss, model_fn, output_loss_fn


def bench_products(width, dtype, repeats):
    """Loss, gradient and curvature products: seconds, flops, same program."""
    params, loss, model_fn, output_loss_fn = make_problem(width, dtype)
    vector = otu.tree_random_like(jax.random.key(1), params)
    fns = {
        "loss": (jax.jit(loss), (params,)),
        "grad": (jax.jit(jax.grad(loss)), (params,)),
        "hvp": (jax.jit(lambda p, v: so_opt.hvp(loss, p, v)), (params, vector)),
        "bare jvp(grad)": (
            jax.jit(lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]),
            (params, vector),
        ),
        "ggn_vp": (
            jax.jit(lambda p, v: so_opt.ggn_vp(model_fn, output_loss_fn, p, v)),
            (params, vector),
        ),
    }
    lowered = {n: f.lower(*a) for n, (f, a) in fns.items()}
    ops = {n: flops(low.compile()) for n, low in lowered.items()}
    # so_opt's checks run at trace time, so the wrapper should add no op at all.
    same = lowered["hvp"].as_text() == lowered["bare jvp(grad)"].as_text()
    candidates = {n: (lambda f=f, a=a: f(*a)) for n, (f, a) in fns.items()}
    times = time_interleaved(candidates, repeats)
    return otu.tree_size(params), times, ops, same


def bench_cg(width, dtype, repeats):
    """CG_STEPS of so_opt's truncated CG: products linearized once or not."""
    params, loss, model_fn, output_loss_fn = make_problem(width, dtype)

    def cg(matvec, grad):
        damped = lambda v: otu.tree_add_scale(matvec(v), CG_DAMPING, v)
        rhs = otu.tree_scale(-1.0, grad)
        out = so_opt.truncated_cg(
            damped,
            rhs,
            # A warm start, as hessian_free passes from its second step on:
            # one product before the loop, inside a `lax.cond`.
            x0=otu.tree_scale(WARM_START_SCALE, rhs),
            max_steps=CG_STEPS,
            tol=0.0,
            progress_tol=0.0,
        )
        return out.x, out.num_matvecs

    def hvp_linearized(p):
        grad, hvp_fn = so_opt.linearize_hvp(loss, p)  # one jax.linearize
        return cg(hvp_fn, grad)

    def hvp_independent(p):
        hvp_fn = lambda v: jax.jvp(jax.grad(loss), (p,), (v,))[1]
        return cg(hvp_fn, jax.grad(loss)(p))

    def ggn_linearized(p):
        return cg(so_opt.linearize_ggn(model_fn, output_loss_fn, p), jax.grad(loss)(p))

    def ggn_independent(p):
        ggn_fn = lambda v: so_opt.ggn_vp(model_fn, output_loss_fn, p, v)
        return cg(ggn_fn, jax.grad(loss)(p))

    fns = {
        "hvp linearized": hvp_linearized,
        "hvp independent": hvp_independent,
        "ggn linearized": ggn_linearized,
        "ggn independent": ggn_independent,
    }
    jitted = {n: jax.jit(f) for n, f in fns.items()}
    grad_flops = flops(jax.jit(jax.grad(loss)).lower(params).compile())
    dots, extra = {}, {}
    for name, fn in jitted.items():
        compiled = fn.lower(params).compile()
        # Cost analysis counts a while loop's body once, so the flops differ
        # only by the work outside the loop; shown in gradients.
        extra[name] = (flops(compiled) / grad_flops, peak_bytes(compiled))
        dots[name] = loop_body_dots(compiled)
        products = int(fn(params)[1])
        if products != CG_STEPS + 1:
            raise RuntimeError(f"{name}: CG took {products} products.")
    candidates = {n: (lambda f=f: f(params)) for n, f in jitted.items()}
    return time_interleaved(candidates, repeats), dots, extra


def bench_dense(width, dtype, repeats):
    """so_opt.hessian_matrix against jax.hessian of the flattened loss."""
    params, loss, _, _ = make_problem(width, dtype)
    x, unravel = ravel_pytree(params)
    flat_loss = lambda flat: loss(unravel(flat))
    fns = {
        "so_opt.hessian_matrix": jax.jit(lambda z: so_opt.hessian_matrix(flat_loss, z)),
        "jax.hessian": jax.jit(jax.hessian(flat_loss)),
    }
    memory = {n: peak_bytes(f.lower(x).compile()) for n, f in fns.items()}
    ours, ref = (np.asarray(f(x)) for f in fns.values())
    # Same matrix up to float32 rounding, or the timing would be meaningless.
    error = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
    candidates = {n: (lambda f=f: f(x)) for n, f in fns.items()}
    times = time_interleaved(candidates, repeats, min_seconds=0.0)
    return x.size, times, memory, error


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--dense-widths", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--dense-repeats", type=int, default=7)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    # The tables are this script's output, so they go to stdout.
    print(
        f"# jax {jax.__version__}, {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"dtype {args.dtype}, median of {args.repeats} interleaved repeats "
        f"({args.dense_repeats} for the dense Hessian), "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )

    print("\n## Products on the full digits training batch (ratio to gradient)\n")
    print(
        "| width | k | grad ms | loss | hvp | bare jvp(grad) | hvp/bare | ggn_vp "
        "| flops: hvp | flops: ggn_vp | hvp program = bare |"
    )
    print("|---" * 11 + "|")
    for width in args.widths:
        k, t, ops, same = bench_products(width, args.dtype, args.repeats)
        g, fg = t["grad"], ops["grad"]
        print(
            f"| {width} | {k} | {1e3 * g:.3f} | {t['loss'] / g:.2f} | "
            f"{t['hvp'] / g:.2f} | {t['bare jvp(grad)'] / g:.2f} | "
            f"{t['hvp'] / t['bare jvp(grad)']:.3f} | {t['ggn_vp'] / g:.2f} | "
            f"{ops['hvp'] / fg:.2f} | {ops['ggn_vp'] / fg:.2f} | "
            f"{'yes' if same else 'no'} |",
            flush=True,
        )

    print(
        f"\n## {CG_STEPS} warm-started steps of truncated CG at one point, damping "
        f"{CG_DAMPING:g} (ms; flops / gradient; matrix products in the CG loop)\n"
    )
    names = ["hvp linearized", "hvp independent", "ggn linearized", "ggn independent"]
    print(
        "| width | "
        + " | ".join(names)
        + " | hvp indep./lin. time | hvp indep. - lin. flops "
        + "| hvp peak MiB lin. / indep. | loop dots |"
    )
    print("|---" * (len(names) + 5) + "|")
    for width in args.widths:
        t, dots, extra = bench_cg(width, args.dtype, args.repeats)
        cells = " | ".join(f"{1e3 * t[n]:.2f}" for n in names)
        ratio = t["hvp independent"] / t["hvp linearized"]
        flop_gap = extra["hvp independent"][0] - extra["hvp linearized"][0]
        peaks = " / ".join(
            f"{extra[n][1] / 2**20:.1f}" for n in ("hvp linearized", "hvp independent")
        )
        dot_cells = " / ".join(str(dots[n]) for n in names)
        print(
            f"| {width} | {cells} | {ratio:.3f} | {flop_gap:.2f} | {peaks} "
            f"| {dot_cells} |",
            flush=True,
        )

    print("\n## Dense Hessian (time ms; peak MiB from compiled memory_analysis)\n")
    print(
        "| width | k | hessian_matrix ms | jax.hessian ms | ratio | "
        "hessian_matrix MiB | jax.hessian MiB | max rel. difference |"
    )
    print("|---" * 8 + "|")
    for width in args.dense_widths:
        k, t, mem, error = bench_dense(width, args.dtype, args.dense_repeats)
        ours, ref = t["so_opt.hessian_matrix"], t["jax.hessian"]
        print(
            f"| {width} | {k} | {1e3 * ours:.1f} | {1e3 * ref:.1f} | "
            f"{ours / ref:.2f} | {mem['so_opt.hessian_matrix'] / 2**20:.1f} | "
            f"{mem['jax.hessian'] / 2**20:.1f} | {error:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

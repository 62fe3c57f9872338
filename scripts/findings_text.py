"""The numbers and sentences of the README's "Findings", from study results.

Every function takes a study's ``results.json`` (as a dict) and returns
Markdown lines; :func:`section` puts them together. The compare numbers
are those of the compare report itself (:func:`experiments.report.summarize`:
the same targets, medians and "reached on every seed" rule), so the README
and ``summary.md`` cannot disagree.
"""

from __future__ import annotations

import math
from typing import Any

# Gradient descent with a fixed and with a cosine-annealed learning rate: the
# baselines the project's question is about (experiments/registry.py).
BASELINES = ("sgd", "sgd_annealed")
NEWTON = ("newton", "newton_saddle_free", "hessian_free", "hessian_free_hessian")


def _g(value: float | None, digits: int = 3) -> str:
    """A number to ``digits`` significant digits; a dash for ``None``/NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 10 ** (digits + 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _image(figures: dict[str, str], name: str, alt: str) -> list[str]:
    return [f"![{alt}]({figures[name]})", ""] if name in figures else []


# -- compare ------------------------------------------------------------------


def beats(rows: list[dict], i: int, kind: str) -> tuple[dict | None, list]:
    """The better gradient descent to target ``i`` and the methods that beat it.

    ``kind`` is ``"seconds"`` or ``"work"``. Only medians of methods that
    reached the target on every seed count (the report's ranked values); with
    no baseline there, every method that got there beats it. Returns the
    baseline row (or ``None``) and ``(row, ratio to the baseline)`` pairs,
    best first; the ratio is ``None`` without a baseline.
    """
    key = f"ranked_{kind}_{i}"
    base = [r for r in rows if r["optimizer"] in BASELINES and r[key] is not None]
    best = min(base, key=lambda r: r[key]) if base else None
    out = [
        (r, None if best is None else r[key] / best[key])
        for r in rows
        if r["optimizer"] not in BASELINES
        and r[key] is not None
        and (best is None or r[key] < best[key])
    ]
    return best, sorted(out, key=lambda pair: pair[0][key])


def _names(pairs: list) -> str:
    if not pairs:
        return "none"
    return ", ".join(
        f"`{r['optimizer']}`" + ("" if ratio is None else f" ({ratio:.2g}x)")
        for r, ratio in pairs
    )


def compare_lines(results: dict[str, Any], figures: dict[str, str]) -> list[str]:
    """The compare study: who beats tuned fixed/annealed-rate gradient descent."""
    from experiments import report

    config = results["config"]
    caps = [f"{config['steps']} steps"]
    if config.get("seconds"):
        caps.append(f"{config['seconds']:g} s")
    if config.get("grad_equivalents"):
        caps.append(f"{config['grad_equivalents']:g} gradient equivalents")
    ratios = results["cost_ratios"]
    summary = figures.get("summary.md")
    lines = [
        f"### Who beats gradient descent (`compare`, run `{results['run_id']}`)",
        "",
        f"`{config['problem']}` ({results['num_params']:,} params), seeds "
        f"{config['seeds']}, every run under the same budget ({' or '.join(caps)}, "
        "whichever comes first)"
        + (
            "; each method's declared hyperparameter grid tuned on the validation split"
            if config.get("tune")
            else "; registry default hyperparameters"
        )
        + f"; {results['environment']['device_kind']}. One value evaluation costs "
        f"{ratios['value_per_grad']:.2f} gradients and one Hessian-vector product "
        f"{ratios['hvp_per_grad']:.2f}, measured on the problem. "
        "Baseline: the better of gradient descent with a fixed (`sgd`) and a "
        "cosine-annealed (`sgd_annealed`) learning rate, per target. A ratio is "
        "the method's median over seeds divided by the baseline's; only methods "
        "that reach a target on every seed count."
        + (f" Full report: [`{summary}`]({summary})." if summary else ""),
    ]
    rows = report.summarize(results)
    for regime in config["regimes"]:
        mine = [r for r in rows if r["regime"] == regime and "skipped" not in r]
        if not mine:
            continue
        lines += ["", *_regime_lines(regime, mine)]
        for axis, what in (("time", "wall time"), ("grad_equivalents", "work")):
            lines += _image(
                figures,
                f"{regime}_loss_vs_{axis}.png",
                f"{regime}-batch train loss against {what}",
            )
    return lines


def _regime_lines(regime: str, rows: list[dict]) -> list[str]:
    title = "Full batch" if regime == "full" else "Mini-batch"
    targets = rows[0]["targets"]
    lines = [f"**{title}** (targets: train loss {', '.join(_g(t) for t in targets)})."]
    lines.append("")
    for i, target in enumerate(targets):
        text = f"- To {_g(target)}: "
        for kind, what in (("seconds", "in wall time"), ("work", "in work")):
            base, pairs = beats(rows, i, kind)
            if base is None:
                text += f"no gradient descent gets there; reached {what}: "
            else:
                unit = " s" if kind == "seconds" else " gradient equivalents"
                text += (
                    f"`{base['optimizer']}` takes {_g(base[f'ranked_{kind}_{i}'])}"
                    f"{unit}; beaten {what} by "
                )
            text += _names(pairs) + ("; " if kind == "seconds" else ".")
        lines.append(text)
    never = [
        r["optimizer"] for r in rows if r[f"ranked_seconds_{len(targets) - 1}"] is None
    ]
    if targets and never:
        lines.append(
            f"- Not at {_g(targets[-1])} on every seed within the budget: "
            + ", ".join(f"`{n}`" for n in never)
            + "."
        )
    best = sorted(
        (r for r in rows if r.get("test_accuracy_mean") is not None),
        key=lambda r: -r["test_accuracy_mean"],
    )[:3]
    if best:
        lines.append(
            "- Best final test accuracy: "
            + ", ".join(
                f"`{r['optimizer']}` {r['test_accuracy_mean']:.3f}" for r in best
            )
            + "; "
            + ", ".join(
                f"`{r['optimizer']}` {r['test_accuracy_mean']:.3f}"
                for r in rows
                if r["optimizer"] in BASELINES and r.get("test_accuracy_mean")
            )
            + "."
        )
    return [*lines, ""]


# -- scaling ------------------------------------------------------------------


def _fit_cell(fit: dict | None) -> str:
    if not fit:
        return "-"
    text = f"{fit['slope']:.2f}"
    if math.isfinite(fit.get("ci_low", math.nan)):
        text += f" [{fit['ci_low']:.2f}, {fit['ci_high']:.2f}]"
    return text


def scaling_lines(results: dict[str, Any], figures: dict[str, str]) -> list[str]:
    """The scaling study: fitted slopes, the Newton/Hessian-free ratio."""
    config, records = results["config"], results["records"]
    fits = results["fits"]
    by = {(r["component"], r["k"]): r for r in records}
    ks = sorted({r["k"] for r in records})
    lines = [
        f"### What one step costs as k grows (`scaling`, run `{results['run_id']}`)",
        "",
        f"The digits MLP with one hidden layer, k = {ks[0]:,} to {ks[-1]:,} params; "
        f"one step from the initial params, median of {config['repeats']} "
        "interleaved repeats, compilation excluded, "
        f"{config['dtype']}, single-threaded BLAS and XLA, "
        f"{results['environment']['device_kind']}. Slopes are least-squares fits "
        f"of log time on log k for k >= {config['fit_min_k']:,}, with 95 % "
        "confidence intervals.",
        "",
        "| component | expected slope | fitted slope [95 % CI] | "
        f"s at k = {ks[0]:,} | s at k = {ks[-1]:,} | peak MiB at k = {ks[-1]:,} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    expected = {
        "newton_step": "2 to 3",
        "newton_hessian": "2",
        "newton_solve": "3",
        "hessian_free_step": "1",
        "cg_product": "1",
        "lbfgs_step": "1",
    }
    for name, slope in expected.items():
        low, high = by.get((name, ks[0])), by.get((name, ks[-1]))
        if low is None and high is None:
            continue
        memory = (high or {}).get("memory") or {}
        lines.append(
            f"| `{name}` | {slope} | {_fit_cell(fits.get(name))} | "
            f"{_g(low and low['median_seconds'])} | "
            f"{_g(high and high['median_seconds'])} | "
            f"{_g(memory.get('peak', math.nan) / 2**20)} |"
        )
    lines += ["", *_scaling_bullets(results, by, ks), ""]
    lines += _image(figures, "scaling_time.png", "time per step against k")
    lines += _image(figures, "scaling_memory.png", "peak memory per step against k")
    return lines


def _scaling_bullets(results: dict, by: dict, ks: list[int]) -> list[str]:
    config, fits = results["config"], results["fits"]
    out = []
    solve, product = fits.get("newton_solve"), fits.get("cg_product")
    if solve:
        out.append(
            f"- Exact Newton's dense solve ({config['solver']}) grows as "
            f"k^{solve['slope']:.2f}; forming the Hessian from k Hessian-vector "
            "products as k^"
            + (
                f"{fits['newton_hessian']['slope']:.2f}"
                if "newton_hessian" in fits
                else "?"
            )
            + "."
        )
    if product:
        out.append(
            f"- One CG step of Hessian-free (one Gauss-Newton-vector product) grows "
            f"as k^{product['slope']:.2f}; a whole step with "
            f"{config['cg_steps']} CG steps as k^"
            + (
                f"{fits['hessian_free_step']['slope']:.2f}"
                if "hessian_free_step" in fits
                else "?"
            )
            + "."
        )
    both = [
        k for k in ks if ("newton_step", k) in by and ("hessian_free_step", k) in by
    ]
    if both:
        ratio = lambda k: (
            by["newton_step", k]["median_seconds"]
            / by["hessian_free_step", k]["median_seconds"]
        )
        cross = results["crossover_k"]
        text = (
            f"- One exact Newton step costs {ratio(both[0]):.3g}x a Hessian-free "
            f"step at k = {both[0]:,} and {ratio(both[-1]):.3g}x at k = {both[-1]:,}. "
        )
        if cross["measured"] is None:
            text += "Newton's step never costs more in the measured range"
        elif cross["measured"] <= both[0]:
            text += (
                "It costs more already at the smallest k measured, so the crossover "
                "lies below the range"
            )
        else:
            text += f"It costs more from k = {cross['measured']:,.0f} (measured)"
        if cross.get("fitted_lines"):
            text += f"; the fitted lines cross at k = {cross['fitted_lines']:,.0f}"
        out.append(text + ".")
    largest = [k for k in ks if ("newton_step", k) in by]
    if largest and ("hessian_free_step", largest[-1]) in by:
        k = largest[-1]
        newton = (by["newton_step", k].get("memory") or {}).get("peak")
        hf = (by["hessian_free_step", k].get("memory") or {}).get("peak")
        if newton and hf:
            out.append(
                f"- Memory at k = {k:,}: a Newton step needs {newton / 2**20:,.0f} MiB "
                f"(the k x k Hessian is {k * k * 4 / 2**20:,.0f} MiB in float32), "
                f"a Hessian-free step {hf / 2**20:.2g} MiB."
            )
    return out


# -- spectrum -----------------------------------------------------------------


def spectrum_lines(results: dict[str, Any], figures: dict[str, str]) -> list[str]:
    """The spectrum study: negative curvature and conditioning along training."""
    config, points = results["config"], results["checkpoints"]
    first, last = points[0], points[-1]
    negatives = [c["num_negative"] for c in points]
    ratios = [c["negative_ratio"] for c in points]
    found = 2 * config["num_eigs"]
    lines = [
        f"### Curvature along training (`spectrum`, run `{results['run_id']}`)",
        "",
        f"The digits MLP {config['hidden']} ({results['num_params']:,} params) "
        f"trained full batch by `{config['optimizer']}` for {config['steps']} "
        f"steps; every {config['every']} steps Lanczos finds the "
        f"{config['num_eigs']} smallest and largest Hessian eigenvalues and "
        f"Hutchinson estimates the trace ({config['trace_samples']} probes).",
        "",
        f"- From step 0 to step {last['step']} the train loss goes from "
        f"{_g(first['loss'])} to {_g(last['loss'])}; lambda_max from "
        f"{_g(first['lambda_max'])} to {_g(last['lambda_max'])}, lambda_min from "
        f"{_g(first['lambda_min'])} to {_g(last['lambda_min'])}, the trace from "
        f"{_g(first['trace'])} to {_g(last['trace'])}.",
        f"- Negative eigenvalues among the {found} found: {min(negatives)} to "
        f"{max(negatives)} per probe, at {sum(n > 0 for n in negatives)} of "
        f"{len(points)} probes; |lambda_min| / lambda_max between "
        f"{_g(min(ratios))} and {_g(max(ratios))}.",
        "- An undamped Newton step -H^-1 g moves *up* along every direction of "
        "negative curvature (and far along near-zero ones), which is why "
        "`newton` damps its Hessian (or takes |eigenvalues|, saddle-free) and "
        "`hessian_free` defaults to the positive semi-definite Gauss-Newton "
        "matrix.",
        "",
    ]
    lines += _image(figures, "spectrum.png", "Hessian eigenvalues along training")
    return lines


# -- the section ---------------------------------------------------------------


def section(loaded: dict[str, dict], figures: dict[str, dict]) -> str:
    """The whole generated section; studies without a full run say so."""
    lines = [
        "<!-- Generated by scripts/findings.py from the latest full runs under "
        "results/; edit that script, not this text. -->",
        "",
        "Reproduce all of it (about an hour on a 2-core CPU): `scripts/reproduce.sh`.",
        "",
    ]
    writers = {
        "compare": compare_lines,
        "scaling": scaling_lines,
        "spectrum": spectrum_lines,
    }
    for study, write in writers.items():
        if study in loaded:
            lines += [*write(loaded[study], figures.get(study, {})), ""]
        else:
            lines += [f"### `{study}`", "", "No full run of this study yet.", ""]
    return "\n".join(lines).rstrip() + "\n"

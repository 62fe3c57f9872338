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
    if abs(value) >= 10**digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _t(target: float) -> str:
    """A target train loss as stored: it carries the digits that tell it apart
    from the best loss (``experiments.report.automatic_targets``)."""
    return f"{target:g}"


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
        "that reach a target on every seed count. "
        + (
            "Targets: those given in the config."
            if config.get("targets")
            else "Targets (automatic): 1/10, 1/100 and 1/1000 of the way from the "
            "train loss at the initial params to the lowest train loss any method "
            "reached in the regime, so the best method reaches all three."
        )
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
                f"{'full' if regime == 'full' else 'mini'}-batch train loss "
                f"against {what}",
            )
    return lines


def _fastest(rows: list[dict], i: int) -> str:
    """Who gets to target ``i`` on every seed: count, fastest and cheapest."""
    times = sorted(
        (r for r in rows if r[f"ranked_seconds_{i}"] is not None),
        key=lambda r: r[f"ranked_seconds_{i}"],
    )
    if not times:
        return "no method does"
    cheap = min(times, key=lambda r: r[f"ranked_work_{i}"])
    return (
        f"{len(times)} methods do: fastest `{times[0]['optimizer']}` "
        f"({_g(times[0][f'ranked_seconds_{i}'])} s), least work "
        f"`{cheap['optimizer']}` ({_g(cheap[f'ranked_work_{i}'])} gradient "
        "equivalents)"
    )


def _target_line(rows: list[dict], i: int) -> str:
    """One bullet: the baseline's time and work to target ``i``, who beats it."""
    text = f"- To {_t(rows[0]['targets'][i])}: "
    base, faster = beats(rows, i, "seconds")
    if base is None:
        return (
            text + "neither gradient descent gets there on every seed; "
            f"{_fastest(rows, i)}."
        )
    work_base, cheaper = beats(rows, i, "work")
    return (
        text
        + f"`{base['optimizer']}` takes {_g(base[f'ranked_seconds_{i}'])} s"
        + (
            f" (`{work_base['optimizer']}` "
            if work_base["optimizer"] != base["optimizer"]
            else " and "
        )
        + f"{_g(work_base[f'ranked_work_{i}'])} gradient equivalents"
        + (")" if work_base["optimizer"] != base["optimizer"] else "")
        + f"; faster: {_names(faster)}; less work: {_names(cheaper)}."
    )


def _regime_lines(regime: str, rows: list[dict]) -> list[str]:
    title = "Full batch" if regime == "full" else "Mini-batch"
    targets = rows[0]["targets"]
    lines = [
        f"**{title}** (targets: train loss {', '.join(_t(t) for t in targets)}; "
        "ratios to the better gradient descent in brackets).",
        "",
        *(_target_line(rows, i) for i in range(len(targets))),
    ]
    never = [
        r["optimizer"] for r in rows if r[f"ranked_seconds_{len(targets) - 1}"] is None
    ]
    if targets and never:
        lines.append(
            f"- Not at {_t(targets[-1])} on every seed within the budget: "
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
            + "; gradient descent: "
            + ", ".join(
                f"`{r['optimizer']}` {r['test_accuracy_mean']:.3f}"
                for r in rows
                if r["optimizer"] in BASELINES and r.get("test_accuracy_mean")
            )
            + "."
        )
    return [*lines, "", *_ranking_table(rows), ""]


def _ranking_table(rows: list[dict]) -> list[str]:
    """Seconds and work to each target (medians, every seed), test accuracy.

    Methods are sorted by the time to the tightest target they reach on every
    seed, tightest first; a dash is a target not reached on every seed.
    """
    targets = rows[0]["targets"]
    titles = [f"s to {_t(t)}" for t in targets]
    titles += [f"grad-equiv to {_t(t)}" for t in targets]
    lines = [
        "| optimizer | " + " | ".join(titles) + " | test accuracy | status |",
        "|---|" + "---:|" * (len(titles) + 1) + "---|",
    ]

    def order(row: dict) -> tuple:
        for i in reversed(range(len(targets))):
            if row[f"ranked_seconds_{i}"] is not None:
                return (-i, row[f"ranked_seconds_{i}"])
        return (1, 0.0)

    for row in sorted(rows, key=order):
        cells = [_g(row[f"ranked_seconds_{i}"]) for i in range(len(targets))]
        cells += [_g(row[f"ranked_work_{i}"]) for i in range(len(targets))]
        name = row["optimizer"]
        lines.append(
            f"| {'**' + name + '**' if name in BASELINES else name} | "
            + " | ".join(cells)
            + f" | {_g(row.get('test_accuracy_mean'))} | {row['status']} |"
        )
    return lines


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
    dense = sorted(r["k"] for r in records if r["component"] == "newton_step")
    lines = [
        f"### What one step costs as k grows (`scaling`, run `{results['run_id']}`)",
        "",
        f"The digits MLP with one hidden layer, k = {ks[0]:,} to {ks[-1]:,} params "
        + (f"(exact Newton up to k = {dense[-1]:,}); " if dense else "; ")
        + f"one step from the initial params, median of up to {config['repeats']} "
        "interleaved samples, compilation excluded, "
        f"{config['dtype']}, single-threaded BLAS and XLA, "
        f"{results['environment']['device_kind']}. Slopes are least-squares fits "
        f"of log time on log k over k >= {config['fit_min_k']:,}, with 95 % "
        "confidence intervals.",
        "",
        "| component | expected slope | fitted slope [95 % CI] | k fitted | "
        "s at smallest k | s at largest k | peak MiB at largest k |",
        "|---|---:|---:|---:|---:|---:|---:|",
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
        mine = sorted(k for (n, k) in by if n == name)
        if not mine:
            continue
        low, high = by[name, mine[0]], by[name, mine[-1]]
        fitted = [k for k in mine if k >= config["fit_min_k"]]
        span = f"{fitted[0]:,} to {fitted[-1]:,}" if len(fitted) > 1 else "-"
        peak = (high.get("memory") or {}).get("peak")
        lines.append(
            f"| `{name}` | {slope} | {_fit_cell(fits.get(name))} | {span} | "
            f"{_g(low['median_seconds'])} | {_g(high['median_seconds'])} | "
            f"{_g(peak / 2**20 if peak else None)} |"
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
        text = (
            f"- Exact Newton's dense solve ({config['solver']}) grows as "
            f"k^{solve['slope']:.2f} (k^{_local_slope(by, 'newton_solve')} over the "
            "last doubling of k"
        )
        dense = sorted(k for (n, k) in by if n == "newton_solve")
        rate = lambda k: k**3 / 3 / by["newton_solve", k]["median_seconds"] / 1e9
        if len(dense) > 1 and config["solver"] == "cholesky":
            # Cholesky takes k^3 / 3 flops: a rate that still rises with k is
            # why the fitted slope can sit below 3.
            text += (
                f"; the factorization runs at {rate(dense[0]):.3g} GFLOP/s at k = "
                f"{dense[0]:,} and {rate(dense[-1]):.3g} GFLOP/s at k = {dense[-1]:,}"
            )
        text += ")"
        if "newton_hessian" in fits:
            text += (
                "; forming the Hessian from k Hessian-vector products grows as "
                f"k^{fits['newton_hessian']['slope']:.2f}"
            )
        top = dense[-1] if dense else None
        if top and ("newton_step", top) in by and ("newton_hessian", top) in by:
            step = by["newton_step", top]["median_seconds"]
            share = lambda name: 100 * by[name, top]["median_seconds"] / step
            text += (
                f". At k = {top:,} the Hessian is {share('newton_hessian'):.0f} % "
                f"of a Newton step's time and the solve {share('newton_solve'):.0f} "
                "%: in this range Newton's cost is forming the matrix, not solving "
                "with it"
            )
        out.append(text + ".")
    if product:
        out.append(
            f"- One CG step of Hessian-free (one Gauss-Newton-vector product) grows "
            f"as k^{product['slope']:.2f} (k^{_local_slope(by, 'cg_product')} over "
            f"the last doubling); a whole step with {config['cg_steps']} CG steps as "
            + (
                f"k^{fits['hessian_free_step']['slope']:.2f}"
                if "hessian_free_step" in fits
                else "-"
            )
            + (
                f" and an L-BFGS step as k^{fits['lbfgs_step']['slope']:.2f}"
                if "lbfgs_step" in fits
                else ""
            )
            + ": below 1 where a fixed cost per step (line search, loop control) "
            "still outweighs the work that grows with k."
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
            f"- One exact Newton step costs {_g(ratio(both[0]))}x a Hessian-free "
            f"step at k = {both[0]:,} and {_g(ratio(both[-1]))}x at k = {both[-1]:,}. "
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


def _local_slope(by: dict, name: str) -> str:
    """The log-log slope between the two largest k of a component."""
    ks = sorted(k for (n, k) in by if n == name)
    if len(ks) < 2:
        return "-"
    t0, t1 = (by[name, k]["median_seconds"] for k in ks[-2:])
    return f"{math.log(t1 / t0) / math.log(ks[-1] / ks[-2]):.2f}"


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


# -- the answer in short -------------------------------------------------------


def answer_lines(loaded: dict[str, dict]) -> list[str]:
    """A few bullets that answer the project's question from all three studies."""
    out = []
    compare = loaded.get("compare")
    if compare:
        from experiments import report

        rows = report.summarize(compare)
        for regime in compare["config"]["regimes"]:
            mine = [r for r in rows if r["regime"] == regime and "skipped" not in r]
            if mine and mine[0]["targets"]:
                # k products at the measured HVP cost, besides the gradient.
                cost = compare["num_params"] * compare["cost_ratios"]["hvp_per_grad"]
                out += _regime_answer(regime, mine, cost)
    scaling = loaded.get("scaling")
    if scaling:
        out += _cost_answer(scaling, (compare or {}).get("num_params"))
    spectrum = loaded.get("spectrum")
    if spectrum:
        points = spectrum["checkpoints"]
        negative = sum(c["num_negative"] > 0 for c in points)
        out.append(
            f"- **Curvature**: the Hessian has negative eigenvalues at {negative} "
            f"of {len(points)} points along training (lambda_min "
            f"{_g(points[-1]['lambda_min'])} against lambda_max "
            f"{_g(points[-1]['lambda_max'])} at the end), so a Newton step must "
            "be damped, or use Gauss-Newton curvature, to go downhill."
        )
    return out


def _regime_answer(
    regime: str, rows: list[dict], newton_cost: float | None = None
) -> list[str]:
    # The tightest target some method reaches on every seed (the last one if
    # none does): the most demanding comparison the run can make.
    targets = rows[0]["targets"]
    reached = [
        i
        for i in range(len(targets))
        if any(r[f"ranked_seconds_{i}"] is not None for r in rows)
    ]
    i = reached[-1] if reached else len(targets) - 1
    title = "Full batch" if regime == "full" else "Mini-batch"
    text = (
        f"- **{title}**, to train loss {_t(targets[i])} (the tightest target "
        "reached on every seed" + ("" if reached else ": none is") + "): "
    )
    base, faster = beats(rows, i, "seconds")
    others = sum(r["optimizer"] not in BASELINES for r in rows)
    if base is None:
        text += (
            "neither fixed- nor annealed-rate gradient descent gets there; "
            f"of {others} other methods, {_fastest(rows, i)}."
        )
    else:
        _, cheaper = beats(rows, i, "work")
        text += (
            f"of {others} other methods, {len(faster)} beat the better gradient "
            f"descent (`{base['optimizer']}`, {_g(base[f'ranked_seconds_{i}'])} s) "
            f"in wall time ({_names(faster[:3])}"
            + (", ..." if len(faster) > 3 else "")
            + f") and {len(cheaper)} in gradient equivalents ({_names(cheaper[:3])}"
            + (", ..." if len(cheaper) > 3 else "")
            + ")."
        )
    for row in rows:
        if row["optimizer"] not in ("newton", "newton_saddle_free"):
            continue
        seconds = row[f"ranked_seconds_{i}"]
        text += f" `{row['optimizer']}` "
        if seconds is None:
            finals = [v for v in row["train_loss"] if v is not None]
            text += (
                f"does not get there on every seed: {row['steps']:.0f} steps "
                f"(median), final train loss {_g(max(finals) if finals else None)} "
                f"at worst, stopped by {row['status'].replace('_', ' ')}."
            )
        else:
            text += f"gets there in {_g(seconds)} s"
            if base is not None:
                text += f" ({seconds / base[f'ranked_seconds_{i}']:.2g}x)"
            text += "."
    if newton_cost and any(r["optimizer"].startswith("newton") for r in rows):
        text += (
            " One exact Newton step forms the Hessian from k Hessian-vector "
            f"products: {_g(newton_cost)} gradient equivalents on this problem."
        )
    return [text]


def _cost_answer(scaling: dict, k: int | None) -> list[str]:
    by = {(r["component"], r["k"]): r for r in scaling["records"]}
    dense = sorted(kk for (n, kk) in by if n == "newton_step")
    if k not in dense:
        k = dense[-1] if dense else None
    if k is None or ("hessian_free_step", k) not in by:
        return []
    newton = by["newton_step", k]["median_seconds"]
    hf = by["hessian_free_step", k]["median_seconds"]
    text = (
        f"- **Cost of exact Newton** at k = {k:,}: one step takes {_g(newton)} s, "
        f"{_g(newton / hf)}x a Hessian-free step"
    )
    if dense[-1] != k:
        seconds = by["newton_step", dense[-1]]["median_seconds"]
        text += f"; at k = {dense[-1]:,}, {_g(seconds)} s"
    fit = scaling["fits"].get("newton_step")
    if fit:
        text += f"; it grows as k^{fit['slope']:.2f}"
    return [text + "."]


# -- the section ---------------------------------------------------------------


def _devices(loaded: dict[str, dict]) -> str:
    kinds = {r["environment"]["device_kind"] for r in loaded.values()}
    cores = {r["environment"].get("cpu_count") for r in loaded.values()}
    text = ", ".join(sorted(kinds))
    if len(cores) == 1 and None not in cores:
        text += f", {cores.pop()} CPU cores"
    return text


def section(
    loaded: dict[str, dict],
    figures: dict[str, dict],
    elapsed_seconds: float | None = None,
) -> str:
    """The whole generated section; studies without a full run say so."""
    lines = [
        "<!-- Generated by scripts/findings.py from the latest full runs under "
        "results/; edit that script, not this text. -->",
        "",
        "Reproduce all of it with `scripts/reproduce.sh`"
        + (
            f" (this run took {elapsed_seconds / 60:.0f} minutes on "
            f"{_devices(loaded)})."
            if elapsed_seconds
            else "."
        ),
        "",
    ]
    answer = answer_lines(loaded)
    if answer:
        lines += ["In short:", "", *answer, ""]
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

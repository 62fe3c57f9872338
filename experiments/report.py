"""Turn a study's ``results.json`` into a Markdown report, a CSV and PNG plots.

Nothing here runs an optimizer: the report can be rebuilt from the JSON alone
(``python -m experiments.report results/<run-id>``), e.g. after changing the
targets in the config stored there.

Per regime the report holds the final metrics (mean and standard deviation
over seeds) with each method's rank by test accuracy and test loss, the time
and work to reach each target train loss with ranks, and the tuning trials.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import statistics
from collections.abc import Sequence
from typing import Any

from experiments import registry
from so_opt import runner

logger = logging.getLogger(__name__)

_AXES = (
    ("steps", "step", "step"),
    ("time", "seconds", "wall time [s] (compilation excluded)"),
    ("grad_equivalents", "grad_equivalents", "gradient equivalents"),
)
# Automatic targets: 1/10, 1/100 and 1/1000 of the way left from the initial
# train loss to the lowest train loss any method reached in the regime,
# ``best + (initial - best) * f``. The same for every method, and meaningful
# whatever the optimum is (a regularized loss does not go to 0).
_TARGET_FRACTIONS = (1e-1, 1e-2, 1e-3)
# Stored with the targets in results.json: targets recorded under another rule
# (older results) are recomputed rather than reused.
TARGET_RULE = "best + (initial - best) * 10^-j, j = 1, 2, 3"
TARGET_SOURCE = (
    "automatic: best + (initial - best) / 10, / 100, / 1000, from the initial "
    "train loss to the lowest train loss any method reached in this regime"
)


def grad_equivalents(history: dict[str, list], ratios: dict[str, float]) -> list:
    """Cumulative work of each recorded step, in gradients (see DESIGN.md)."""
    return [
        runner.gradient_equivalents(v, g, h, ratios)
        for v, g, h in zip(
            history["value_evals"],
            history["grad_evals"],
            history["hvp_evals"],
            strict=True,
        )
    ]


def first_reaching(history: dict[str, list], target: float, ratios: dict) -> dict:
    """Step, seconds and gradient equivalents when the train loss first <= target."""
    work = grad_equivalents(history, ratios)
    for i, loss in enumerate(history["train_loss"]):
        if loss <= target:
            return {
                "step": history["step"][i],
                "seconds": history["seconds"][i],
                "grad_equivalents": work[i],
            }
    return {}


def _finite(values: Sequence[Any]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _round_above(value: float, gap: float) -> float:
    # ``value`` to the fewest significant digits (at least 3) whose rounding
    # error is under a tenth of ``gap``, so a target never rounds to the best.
    digits = 3
    if gap > 0 and value > 0:
        digits = max(digits, math.ceil(math.log10(value / gap)) + 2)
    return float(f"{value:.{min(digits, 12)}g}")


def initial_loss(results: dict[str, Any], regime: str) -> float | None:
    """The train loss at the initial params (median over seeds), if known."""
    start = results.get("initial_train_loss")
    if start is not None:
        return start
    # Older results: the first recorded train loss of each run.
    first = _finite(
        [
            r["history"]["train_loss"][0]
            for r in results["runs"]
            if r["regime"] == regime and "skipped" not in r and r["history"]["step"]
        ]
    )
    return statistics.median(first) if first else None


def best_loss(results: dict[str, Any], regime: str) -> float | None:
    """The lowest finite train loss any run (any seed) recorded in ``regime``.

    The recorded history is what the targets are checked against, so the
    method that got lowest reaches every automatic target.
    """
    losses = _finite(
        [
            loss
            for r in results["runs"]
            if r["regime"] == regime and "skipped" not in r
            for loss in r["history"]["train_loss"]
        ]
    )
    return min(losses) if losses else None


def automatic_targets(initial: float | None, best: float | None) -> list[float]:
    """``best + (initial - best) * f`` for f = 1e-1, 1e-2, 1e-3, loosest first.

    ``[]`` when there is no finite run or no method went below the initial loss.
    """
    if initial is None or best is None or not best < initial:
        return []
    gap = initial - best
    return [_round_above(best + gap * f, gap * f) for f in _TARGET_FRACTIONS]


def targets_for(results: dict[str, Any], regime: str) -> list[float]:
    """The target train losses of ``regime``, loosest first.

    Those given in the config, else those recorded in the results under the
    current rule (:data:`TARGET_RULE`), else :func:`automatic_targets` from
    the initial train loss (``initial_train_loss``: at the initial params,
    median over seeds) and the lowest train loss of the regime (:func:`best_loss`).
    """
    given = results["config"].get("targets")
    if given:
        return list(given)
    recorded = results.get("targets") or {}
    if recorded.get(regime) and results.get("targets_rule") == TARGET_RULE:
        return list(recorded[regime])
    return automatic_targets(initial_loss(results, regime), best_loss(results, regime))


def record_targets(results: dict[str, Any]) -> bool:
    """Sets ``results["targets"]`` (per regime) and ``results["targets_rule"]``.

    Returns whether they changed (e.g. results recorded under an older rule).
    """
    given = bool(results["config"].get("targets"))
    targets = {r: targets_for(results, r) for r in results["config"]["regimes"]}
    rule = "given" if given else TARGET_RULE
    if results.get("targets") == targets and results.get("targets_rule") == rule:
        return False
    results["targets"], results["targets_rule"] = targets, rule
    return True


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.fmean(values):.4g} ± {statistics.stdev(values):.2g}"


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _shown_hparams(run: dict[str, Any], tuned: bool) -> str:
    # The hyperparameters a reader compares: those with a declared grid.
    method = registry.REGISTRY.get(run["optimizer"])
    keys = list(method.grid) if method is not None else list(run["hparams"])
    text = ", ".join(f"{k}={run['hparams'][k]}" for k in keys if k in run["hparams"])
    return (text or "-") + (" (tuned)" if tuned else "")


def _rank(rows: list[dict], key: str, reverse: bool = False) -> None:
    # Competition ranks (1, 2, 2, 4) on a numeric key, so that equal values
    # share a rank; rows without a value get no rank.
    values = [r[key] for r in rows if r.get(key) is not None]
    for row in rows:
        if row.get(key) is not None:
            better = sum((v > row[key]) if reverse else (v < row[key]) for v in values)
            row[f"{key}_rank"] = 1 + better


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (regime, optimizer), aggregated over seeds, with ranks."""
    ratios = results["cost_ratios"]
    tuned = {
        (t["regime"], t["optimizer"])
        for t in results.get("tuning", [])
        if t["selected"] is not None
    }
    rows = []
    for regime in results["config"]["regimes"]:
        runs = [r for r in results["runs"] if r["regime"] == regime]
        targets = targets_for(results, regime)
        mine_rows = []
        for name in dict.fromkeys(r["optimizer"] for r in runs):
            mine = [r for r in runs if r["optimizer"] == name]
            if all("skipped" in r for r in mine):
                rows.append(
                    {"regime": regime, "optimizer": name, "skipped": mine[0]["skipped"]}
                )
                continue
            mine = [r for r in mine if "skipped" not in r]
            final = {
                key: [r["final"].get(key) for r in mine]
                for key in ("train_loss", "valid_loss", "test_loss", "test_accuracy")
            }
            row = {
                "regime": regime,
                "optimizer": name,
                "hparams": _shown_hparams(mine[0], (regime, name) in tuned),
                "seeds": len(mine),
                "status": ",".join(sorted({r["status"] for r in mine})),
                "steps": _median([r["steps"] for r in mine]),
                **final,
                "test_accuracy_mean": _mean_or_none(final["test_accuracy"]),
                "test_loss_mean": _mean_or_none(final["test_loss"]),
                "value_evals": _median([r["costs"]["value_evals"] for r in mine]),
                "grad_evals": _median([r["costs"]["grad_evals"] for r in mine]),
                "hvp_evals": _median([r["costs"]["hvp_evals"] for r in mine]),
                "grad_equivalents": _median(
                    [grad_equivalents(r["history"], ratios)[-1] for r in mine]
                ),
                "seconds": _median([r["seconds"] for r in mine]),
                "targets": targets,
            }
            for i, target in enumerate(targets):
                hit = [first_reaching(r["history"], target, ratios) for r in mine]
                hit = [x for x in hit if x]
                row[f"reached_{i}"] = len(hit)
                every = len(hit) == len(mine)
                # Only a method that reached the target on every seed is ranked.
                row[f"seconds_{i}"] = _median([x["seconds"] for x in hit])
                row[f"work_{i}"] = _median([x["grad_equivalents"] for x in hit])
                row[f"ranked_seconds_{i}"] = row[f"seconds_{i}"] if every else None
                row[f"ranked_work_{i}"] = row[f"work_{i}"] if every else None
            mine_rows.append(row)
        _rank(mine_rows, "test_accuracy_mean", reverse=True)
        _rank(mine_rows, "test_loss_mean")
        for i in range(len(targets)):
            _rank(mine_rows, f"ranked_seconds_{i}")
            _rank(mine_rows, f"ranked_work_{i}")
        rows += mine_rows
    return rows


def _mean_or_none(values: list[Any]) -> float | None:
    values = _finite(values)
    return statistics.fmean(values) if values else None


def _num(value: float | None, fmt: str = "{:.3g}") -> str:
    return "-" if value is None else fmt.format(value)


def _ranked(row: dict, key: str) -> str:
    rank = row.get(f"{key}_rank")
    return "" if rank is None else f" (#{rank})"


def _to_target(row: dict, kind: str, i: int) -> str:
    seeds, reached = row["seeds"], row[f"reached_{i}"]
    if not reached:
        return "-"
    cell = _num(row[f"{kind}_{i}"])
    if reached < seeds:
        return f"{cell} ({reached}/{seeds} seeds)"
    return cell + _ranked(row, f"ranked_{kind}_{i}")


def _header(results: dict[str, Any]) -> list[str]:
    config, env = results["config"], results["environment"]
    caps = [f"{config['steps']} steps"]
    if config.get("seconds"):
        caps.append(f"{config['seconds']:g} s")
    if config.get("grad_equivalents"):
        caps.append(f"{config['grad_equivalents']:g} gradient equivalents")
    mesh = results.get("mesh")
    where = (
        f"data-parallel over {len(mesh['devices'])} device(s) "
        f"({', '.join(mesh['devices'])})"
        if mesh
        else f"{env['device_kind']} ({env['devices'][0]})"
    )
    ratios = results["cost_ratios"]
    return [
        f"# compare: `{config['problem']}` ({results['num_params']} params)",
        "",
        f"Problem arguments {config['problem_args'] or '{}'}; seeds "
        f"{config['seeds']}; budget per run: {' or '.join(caps)}, whichever "
        f"comes first; tuning {'on' if config.get('tune') else 'off'}. jax "
        f"{env['versions']['jax']} on {where}, commit "
        f"{(env['git']['commit'] or 'unknown')[:10]}"
        + (" (uncommitted changes)" if env["git"].get("dirty") else "")
        + ".",
        "",
        "Losses and accuracies are mean ± sd over seeds; counts, seconds and work "
        "are medians. Gradient equivalents use costs measured on this problem: one "
        f"value = {ratios['value_per_grad']:.2f} gradients, one HVP = "
        f"{ratios['hvp_per_grad']:.2f} gradients. Wall time excludes compilation.",
    ]


def _final_table(mine: list[dict]) -> list[str]:
    lines = [
        "| optimizer | hyperparameters | status | steps | train loss | test loss "
        "| test acc | values | grads | HVPs | grad-equiv | seconds |",
        "|" + "---|" * 12,
    ]
    for r in mine:
        cells = [
            r["optimizer"],
            r["hparams"],
            r["status"],
            _num(r["steps"], "{:.0f}"),
            _mean_sd(r["train_loss"]),
            _mean_sd(r["test_loss"]) + _ranked(r, "test_loss_mean"),
            _mean_sd(r["test_accuracy"]) + _ranked(r, "test_accuracy_mean"),
            _num(r["value_evals"], "{:.0f}"),
            _num(r["grad_evals"], "{:.0f}"),
            _num(r["hvp_evals"], "{:.0f}"),
            _num(r["grad_equivalents"]),
            _num(r["seconds"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _target_table(mine: list[dict]) -> list[str]:
    targets = mine[0]["targets"]
    titles = [f"s to {t:g}" for t in targets]
    titles += [f"grad-equiv to {t:g}" for t in targets]
    lines = ["| optimizer | " + " | ".join(titles) + " |"]
    lines.append("|" + "---|" * (1 + len(titles)))
    for r in mine:
        cells = [_to_target(r, "seconds", i) for i in range(len(targets))]
        cells += [_to_target(r, "work", i) for i in range(len(targets))]
        lines.append(f"| {r['optimizer']} | " + " | ".join(cells) + " |")
    return lines


def _at_grid_edge(point: dict[str, Any], grid: dict[str, list]) -> bool:
    """Whether a numeric grid value chosen is the grid's smallest or largest."""
    for key, value in point.items():
        values = grid.get(key, [])
        numeric = [v for v in values if isinstance(v, int | float)]
        if len(numeric) == len(values) > 2 and value in (min(numeric), max(numeric)):
            return True
    return False


def _tuning_lines(results: dict[str, Any], regime: str) -> list[str]:
    entries = [t for t in results.get("tuning", []) if t["regime"] == regime]
    if not entries:
        return []
    lines = [
        "",
        "Tuning (seed "
        f"{results['config']['seeds'][0]}, the same budget; lowest final "
        "validation loss wins):",
        "",
        "| optimizer | validation loss per grid point | selected |",
        "|---|---|---|",
    ]
    for t in entries:
        trials = "; ".join(
            ", ".join(f"{k}={v}" for k, v in row["point"].items())
            + f": {_num(row['valid_loss'], '{:.4g}')}"
            for row in t["trials"]
        )
        chosen = t["selected"]
        selected = (
            ", ".join(f"{k}={v}" for k, v in chosen.items())
            if chosen is not None
            else "none finite: defaults"
        )
        if chosen is not None and _at_grid_edge(chosen, t["grid"]):
            # The best value may lie outside the grid: say so, do not hide it.
            selected += " (grid edge)"
        lines.append(f"| {t['optimizer']} | {trials} | {selected} |")
    return lines


def markdown(results: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The report as Markdown: per regime the final metrics, targets, tuning."""
    lines = _header(results)
    for regime in results["config"]["regimes"]:
        mine = [r for r in rows if r["regime"] == regime and "skipped" not in r]
        if not mine:
            continue
        title = "full batch" if regime == "full" else regime
        lines += ["", f"## {title}", "", *_final_table(mine)]
        if mine[0]["targets"]:
            source = "given" if results["config"].get("targets") else TARGET_SOURCE
            lines += [
                "",
                f"Seconds and gradient equivalents until the train loss first "
                f"reaches each target ({source}); medians over seeds, ranked "
                "(#) among the methods that reached it on every seed.",
                "",
                *_target_table(mine),
            ]
        lines += _tuning_lines(results, regime)
    skipped = [r for r in rows if "skipped" in r]
    if skipped:
        lines += ["", "Not run:", ""]
        lines += [
            f"- {r['optimizer']} ({r['regime']}): {r['skipped']}" for r in skipped
        ]
    return "\n".join(lines) + "\n"


_CSV_KEYS = (
    "hparams",
    "seeds",
    "status",
    "steps",
    "value_evals",
    "grad_evals",
    "hvp_evals",
    "grad_equivalents",
    "seconds",
    "test_accuracy_mean",
    "test_accuracy_mean_rank",
    "test_loss_mean",
    "test_loss_mean_rank",
)


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    """One line per (regime, optimizer, target): final metrics and time to it."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["regime", "optimizer", *_CSV_KEYS, "train_loss_mean", "target"]
            + ["reached", "seconds_to_target", "seconds_rank"]
            + ["work_to_target", "work_rank", "skipped"]
        )
        for row in rows:
            if "skipped" in row:
                blank = [""] * (len(_CSV_KEYS) + 7)
                writer.writerow(
                    [row["regime"], row["optimizer"], *blank, row["skipped"]]
                )
                continue
            cells = [row.get(k, "") for k in _CSV_KEYS]
            cells.append(_mean_or_none(row["train_loss"]))
            for i, target in enumerate(row["targets"] or [None]):
                per = (
                    [""] * 6
                    if target is None
                    else [
                        target,
                        row[f"reached_{i}"],
                        row[f"seconds_{i}"],
                        row.get(f"ranked_seconds_{i}_rank", ""),
                        row[f"work_{i}"],
                        row.get(f"ranked_work_{i}_rank", ""),
                    ]
                )
                writer.writerow([row["regime"], row["optimizer"], *cells, *per, ""])


def log_floor(values: Sequence[float]) -> float | None:
    """Where to draw losses <= 0 on a log axis: a decade below the smallest > 0.

    ``None`` if no value is <= 0 (nothing to floor); 1e-8 if none is > 0.
    """
    finite = _finite(values)
    if all(v > 0 for v in finite):
        return None
    positive = [v for v in finite if v > 0]
    return 10 ** (math.floor(math.log10(min(positive))) - 1) if positive else 1e-8


def _styles(count: int) -> list[tuple[Any, str]]:
    # Distinct qualitative colours (tab10); past 10 methods the colours repeat
    # with another line style, so no two methods share both.
    import matplotlib

    colours = matplotlib.colormaps["tab10"].colors
    dashes = ("-", "--", ":", "-.")
    return [(colours[i % 10], dashes[(i // 10) % 4]) for i in range(count)]


def _title(results: dict[str, Any], regime: str) -> str:
    config = results["config"]
    if regime == "full":
        return f"{config['problem']}: full batch"
    return f"{config['problem']}: mini-batch (batch size {config['batch_size']})"


def plot(results: dict[str, Any], directory: str) -> list[str]:
    """Train loss against steps, wall time and gradient equivalents, per regime.

    Returns the written PNG paths. Every seed is drawn, one colour and line
    style per method; dotted grey lines mark the target train losses. The y
    axis is always logarithmic: a loss <= 0 (float32 reaches exactly 0) is
    drawn at :func:`log_floor`, a decade below the smallest positive loss,
    marked by a dashed line and named in the axis label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = results["cost_ratios"]
    paths = []
    for regime in results["config"]["regimes"]:
        runs = [
            r
            for r in results["runs"]
            if r["regime"] == regime and "skipped" not in r and r["history"]["step"]
        ]
        if not runs:
            continue
        names = list(dict.fromkeys(r["optimizer"] for r in runs))
        styles = _styles(len(names))
        floor = log_floor([v for r in runs for v in r["history"]["train_loss"]])
        ylabel = "train loss (log)"
        if floor is not None:
            ylabel = f"train loss (log; losses <= 0 drawn at {floor:.0e})"
        for axis, key, label in _AXES:
            fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
            for r in runs:
                history = r["history"]
                x = (
                    grad_equivalents(history, ratios)
                    if key == "grad_equivalents"
                    else history[key]
                )
                y = history["train_loss"]
                if floor is not None:
                    y = [v if v is None or not v <= 0 else floor for v in y]
                colour, dash = styles[names.index(r["optimizer"])]
                ax.plot(
                    x,
                    y,
                    color=colour,
                    linestyle=dash,
                    label=r["optimizer"] if r["seed"] == runs[0]["seed"] else None,
                    linewidth=1.3,
                )
            for target in targets_for(results, regime):
                ax.axhline(target, color="grey", linestyle=":", linewidth=0.8)
            if floor is not None:
                ax.axhline(floor, color="black", linestyle="--", linewidth=0.6)
            ax.set_yscale("log")
            if key != "step":
                ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(ylabel)
            ax.set_title(_title(results, regime))
            ax.legend(
                fontsize="small",
                ncol=min(len(names), 4),
                loc="upper center",
                bbox_to_anchor=(0.5, -0.14),
                frameon=False,
            )
            ax.grid(alpha=0.3, which="both")
            path = os.path.join(directory, f"{regime}_loss_vs_{axis}.png")
            fig.savefig(path, dpi=120)
            plt.close(fig)
            paths.append(path)
    return paths


def write(directory: str, results: dict[str, Any]) -> dict[str, Any]:
    """Writes ``summary.md``, ``summary.csv`` and the plots next to the JSON."""
    rows = summarize(results)
    text = markdown(results, rows)
    with open(os.path.join(directory, "summary.md"), "w") as handle:
        handle.write(text)
    write_csv(os.path.join(directory, "summary.csv"), rows)
    plots = plot(results, directory)
    logger.info("report written to %s", directory)
    return {"markdown": text, "rows": rows, "plots": plots}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.report",
        description="Rebuild the tables and plots of a compare study from its JSON.",
    )
    parser.add_argument("directory", help="a results/<run-id> directory")
    args = parser.parse_args(argv)
    path = os.path.join(args.directory, "results.json")
    with open(path) as handle:
        results = json.load(handle)
    if record_targets(results):
        # Older results (another target rule): record the targets the report
        # uses, so that results.json and summary.md agree.
        runner.save_json_atomic(path, results)
        logger.info("targets in %s recomputed: %s", path, results["targets"])
    print(write(args.directory, results)["markdown"])


if __name__ == "__main__":
    main()

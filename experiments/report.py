"""Turn a study's ``results.json`` into a Markdown table, a CSV and PNG plots.

Nothing here runs an optimizer: the report can be rebuilt from the JSON alone
(``python -m experiments.report results/<run-id>``), e.g. after editing the
target loss.
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

from so_opt import runner

logger = logging.getLogger(__name__)

_AXES = (
    ("steps", "step", "step"),
    ("time", "seconds", "wall time [s] (compilation excluded)"),
    ("grad_equivalents", "grad_equivalents", "gradient equivalents"),
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


def default_target(runs: Sequence[dict]) -> float | None:
    """The median final train loss of a regime's runs: half of them reach it."""
    finals = [
        r["final"]["train_loss"]
        for r in runs
        if math.isfinite(r["final"].get("train_loss", math.nan))
    ]
    return statistics.median(finals) if finals else None


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.fmean(values):.4g} ± {statistics.stdev(values):.2g}"


def _median(values: list[float], fmt: str = "{:.3g}") -> str:
    values = [v for v in values if v is not None]
    return fmt.format(statistics.median(values)) if values else "-"


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (regime, optimizer), aggregated over seeds."""
    ratios = results["cost_ratios"]
    rows = []
    for regime in results["config"]["regimes"]:
        runs = [r for r in results["runs"] if r["regime"] == regime]
        done = [r for r in runs if "skipped" not in r]
        target = results["config"].get("target_loss") or default_target(done)
        for name in dict.fromkeys(r["optimizer"] for r in runs):
            mine = [r for r in runs if r["optimizer"] == name]
            if all("skipped" in r for r in mine):
                rows.append(
                    {"regime": regime, "optimizer": name, "skipped": mine[0]["skipped"]}
                )
                continue
            mine = [r for r in mine if "skipped" not in r]
            reach = [first_reaching(r["history"], target, ratios) for r in mine]
            hit = [x for x in reach if x]
            work = [grad_equivalents(r["history"], ratios)[-1] for r in mine]
            rows.append(
                {
                    "regime": regime,
                    "optimizer": name,
                    "seeds": len(mine),
                    "status": ",".join(sorted({r["status"] for r in mine})),
                    "steps": [r["steps"] for r in mine],
                    "train_loss": [r["final"].get("train_loss") for r in mine],
                    "test_loss": [r["final"].get("test_loss") for r in mine],
                    "test_accuracy": [r["final"].get("test_accuracy") for r in mine],
                    "value_evals": [r["costs"]["value_evals"] for r in mine],
                    "grad_evals": [r["costs"]["grad_evals"] for r in mine],
                    "hvp_evals": [r["costs"]["hvp_evals"] for r in mine],
                    "grad_equivalents": work,
                    "seconds": [r["seconds"] for r in mine],
                    "target": target,
                    "reached": f"{len(hit)}/{len(mine)}",
                    "seconds_to_target": [x["seconds"] for x in hit],
                    "work_to_target": [x["grad_equivalents"] for x in hit],
                }
            )
    return rows


_COLUMNS = (
    ("optimizer", "optimizer"),
    ("status", "status"),
    ("steps", "steps"),
    ("train_loss", "train loss"),
    ("test_loss", "test loss"),
    ("test_accuracy", "test acc"),
    ("value_evals", "values"),
    ("grad_evals", "grads"),
    ("hvp_evals", "HVPs"),
    ("grad_equivalents", "grad-equiv"),
    ("seconds", "seconds"),
    ("reached", "reached target"),
    ("seconds_to_target", "s to target"),
    ("work_to_target", "grad-equiv to target"),
)
_MEAN_SD = {"train_loss", "test_loss", "test_accuracy"}


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if key in _MEAN_SD:
        return _mean_sd(value)
    if isinstance(value, list):
        return _median(value, "{:.0f}" if key.endswith("evals") else "{:.3g}")
    return str(value)


def markdown(results: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The summary as Markdown: one table per regime, then the skipped methods."""
    config = results["config"]
    env = results["environment"]
    lines = [
        f"# compare: `{config['problem']}` ({results['num_params']} params)",
        "",
        f"Problem arguments {config['problem_args'] or '{}'}; seeds "
        f"{config['seeds']}; budget {config['steps']} steps"
        + (f" or {config['seconds']} s" if config.get("seconds") else "")
        + " per run; "
        f"jax {env['versions']['jax']} on {env['device_kind']}, commit "
        f"{(env['git']['commit'] or 'unknown')[:10]}.",
        "",
        "Losses are mean ± sd over seeds; counts, seconds and work are medians. "
        "Gradient equivalents use costs measured on this problem: one value = "
        f"{results['cost_ratios']['value_per_grad']:.2f} gradients, one "
        f"HVP = {results['cost_ratios']['hvp_per_grad']:.2f} gradients.",
    ]
    for regime in config["regimes"]:
        mine = [r for r in rows if r["regime"] == regime and "skipped" not in r]
        if not mine:
            continue
        lines += [
            "",
            f"## {regime} batch" if regime == "full" else f"## {regime}",
            "",
            f"Target train loss {mine[0]['target']:.4g} "
            + (
                "(given)."
                if config.get("target_loss")
                else "(median of the final train losses)."
            ),
            "",
            "| " + " | ".join(title for _, title in _COLUMNS) + " |",
            "|" + "---|" * len(_COLUMNS),
        ]
        for row in mine:
            lines.append("| " + " | ".join(_cell(row, k) for k, _ in _COLUMNS) + " |")
    skipped = [r for r in rows if "skipped" in r]
    if skipped:
        lines += ["", "Not run:", ""]
        lines += [
            f"- {r['optimizer']} ({r['regime']}): {r['skipped']}" for r in skipped
        ]
    return "\n".join(lines) + "\n"


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    """One line per (regime, optimizer) with the same cells as the table."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["regime", *(k for k, _ in _COLUMNS), "skipped"])
        for row in rows:
            cells = [_cell(row, k) if k in row else "" for k, _ in _COLUMNS]
            writer.writerow([row["regime"], *cells, row.get("skipped", "")])


def plot(results: dict[str, Any], directory: str) -> list[str]:
    """Train loss against steps, wall time and gradient equivalents, per regime.

    Returns the written PNG paths. Every seed is drawn; one colour per method.
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
        colours = plt.get_cmap("tab20")
        positive = all(v > 0 for r in runs for v in r["history"]["train_loss"])
        for axis, key, label in _AXES:
            fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
            for r in runs:
                history = r["history"]
                x = (
                    grad_equivalents(history, ratios)
                    if key == "grad_equivalents"
                    else history[key]
                )
                index = names.index(r["optimizer"])
                ax.plot(
                    x,
                    history["train_loss"],
                    color=colours(index % 20),
                    label=r["optimizer"] if r["seed"] == runs[0]["seed"] else None,
                    linewidth=1.2,
                )
            if positive:
                ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("train loss")
            ax.set_title(f"{results['config']['problem']}, {regime} batch")
            ax.legend(fontsize="small", ncol=2)
            ax.grid(alpha=0.3)
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
        description="Rebuild the table and plots of a compare study from its JSON.",
    )
    parser.add_argument("directory", help="a results/<run-id> directory")
    args = parser.parse_args(argv)
    with open(os.path.join(args.directory, "results.json")) as handle:
        results = json.load(handle)
    print(write(args.directory, results)["markdown"])


if __name__ == "__main__":
    main()

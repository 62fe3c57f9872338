"""What the ``scaling`` and ``spectrum`` studies share: options and output files.

Both write ``<out>/<run-id>/`` the way ``compare`` does: ``results.json``
(config, seed, environment, measurements), ``summary.md`` and ``summary.csv``
(one table) and PNG plots drawn with matplotlib's Agg backend.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax

from experiments import provenance
from so_opt import runner


def add_common_arguments(parser: argparse.ArgumentParser, quick: str) -> None:
    """Adds ``--quick``, ``--seed``, ``--out``, ``--run-id`` and the log options."""
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the initial params and probes"
    )
    parser.add_argument("--out", default="results", help="directory for results")
    parser.add_argument(
        "--run-id",
        default=None,
        help="name of the result directory (default: study name and UTC time)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide tqdm bar")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging level",
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )


def run_directory(out: str, run_id: str | None, study: str) -> str:
    """Creates and returns ``<out>/<run-id>`` (default id: study and UTC time)."""
    if run_id is None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        run_id = f"{study}-{stamp}"
    directory = os.path.join(out, run_id)
    os.makedirs(directory, exist_ok=True)
    return directory


def start(
    parser: argparse.ArgumentParser,
    make_config: Callable[[argparse.Namespace], dict],
    argv: Sequence[str] | None,
    study: str,
) -> tuple[argparse.Namespace, dict, str]:
    """Parses and validates the options, then creates the run directory.

    A bad option is reported through ``parser.error`` (usage, message, exit
    code 2) before any directory is made or any work starts.

    Returns:
      The parsed arguments, the validated config and the run directory.
    """
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = make_config(args)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    directory = run_directory(args.out, args.run_id, study)
    logging.getLogger(f"experiments.{study}").info(
        "backend %s; config %s", jax.devices(), config
    )
    return args, config, directory


def save_results(directory: str, study: str, config: dict, **parts: Any) -> dict:
    """Writes ``results.json`` atomically with the config and environment."""
    results = {
        "study": study,
        "run_id": os.path.basename(os.path.normpath(directory)),
        "config": config,
        "seed": config["seed"],
        "environment": provenance.environment(),
        **parts,
    }
    runner.save_json_atomic(os.path.join(directory, "results.json"), results)
    return results


def device_line(results: dict[str, Any]) -> str:
    """Where a study ran: device, backend, jax version and commit, for reports."""
    env = results["environment"]
    commit = (env["git"]["commit"] or "unknown")[:10]
    dirty = " with uncommitted changes" if env["git"].get("dirty") else ""
    return (
        f"Ran on {env['device_kind']} ({env['backend']}, {len(env['devices'])} "
        f"device(s)), jax {env['versions']['jax']}, commit {commit}{dirty}"
    )


def format_cell(value: Any) -> str:
    """Numbers to 4 significant digits, ``None`` as a dash, the rest as text."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(
    columns: Sequence[tuple[str, str]], rows: Sequence[dict[str, Any]]
) -> list[str]:
    """A Markdown table as lines; ``columns`` are ``(key, title)`` pairs."""
    lines = ["| " + " | ".join(title for _, title in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        cells = (format_cell(row.get(key)) for key, _ in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_csv(
    path: str, columns: Sequence[tuple[str, str]], rows: Sequence[dict[str, Any]]
) -> None:
    """One CSV line per row, full precision, the column keys as the header."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([key for key, _ in columns])
        for row in rows:
            writer.writerow(["" if row.get(k) is None else row[k] for k, _ in columns])


def write_summary(
    directory: str,
    header: Sequence[str],
    columns: Sequence[tuple[str, str]],
    rows: Sequence[dict[str, Any]],
    footer: Sequence[str] = (),
) -> str:
    """Writes ``summary.md`` (header, table, footer) and ``summary.csv``.

    Returns the Markdown text.
    """
    lines = [*header, "", *markdown_table(columns, rows), *footer]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(directory, "summary.md"), "w") as handle:
        handle.write(text)
    write_csv(os.path.join(directory, "summary.csv"), columns, rows)
    return text


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

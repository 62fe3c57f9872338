"""Regenerate the README's "Findings" section from the latest full studies.

Reads the newest ``results/<run-id>/results.json`` of each study (``compare``,
``scaling``, ``spectrum``) that is not a ``--quick`` run, copies the figures
the section embeds and each study's ``summary.md`` into ``docs/findings/``
(``results/`` is not tracked by git), and rewrites the README between the
two marker comments. Nothing is measured here: every number comes from those
JSON files, so the section can be rebuilt after a study is rerun.

    .venv/bin/python scripts/findings.py [--results results] [--readme README.md]
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

# Run as a file: its own folder (for findings_text) and the repository root
# (for so_opt and experiments) are importable without installing anything.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]

import findings_text  # noqa: E402

logger = logging.getLogger("findings")

START = "<!-- findings:start -->"
END = "<!-- findings:end -->"
STUDIES = ("compare", "scaling", "spectrum")


def is_full(results: dict[str, Any]) -> bool:
    """A run of the study's full configuration, not a smoke test."""
    config = results.get("config", {})
    return not config.get("quick") and not results.get("quick")


def latest_runs(results_dir: str) -> dict[str, str]:
    """The newest full run directory of each study, by ``results.json`` time.

    Studies without a full run are left out of the returned mapping.
    """
    newest: dict[str, tuple[float, str]] = {}
    for path in glob.glob(os.path.join(results_dir, "*", "results.json")):
        try:
            with open(path) as handle:
                results = json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            logger.warning("skipping %s: %s", path, error)
            continue
        study = results.get("study")
        if study not in STUDIES or not is_full(results):
            continue
        stamp = os.path.getmtime(path)
        if study not in newest or stamp > newest[study][0]:
            newest[study] = (stamp, os.path.dirname(path))
    return {study: directory for study, (_, directory) in newest.items()}


# The figures the section embeds, per study (glob patterns in its run folder).
FIGURES = {
    "compare": ("*_loss_vs_time.png", "*_loss_vs_grad_equivalents.png"),
    "scaling": ("scaling_time.png", "scaling_memory.png"),
    "spectrum": ("spectrum.png",),
}


def copy_outputs(study: str, run_dir: str, docs_dir: str) -> dict[str, str]:
    """Copies the study's embedded PNGs and ``summary.md`` into ``docs_dir``.

    Files are renamed ``<study>_<name>`` (``summary.md`` becomes
    ``<study>.md``) so that two studies never collide; the study's files from
    an earlier run are removed first, so none goes stale. Returns the
    original file names mapped to the copied paths.
    """
    os.makedirs(docs_dir, exist_ok=True)
    for old in glob.glob(os.path.join(docs_dir, f"{study}*")):
        os.remove(old)
    copied = {}
    for pattern in FIGURES[study]:
        for path in sorted(glob.glob(os.path.join(run_dir, pattern))):
            name = os.path.basename(path)
            target = name if name.startswith(study) else f"{study}_{name}"
            copied[name] = shutil.copyfile(path, os.path.join(docs_dir, target))
    summary = os.path.join(run_dir, "summary.md")
    if os.path.exists(summary):
        copied["summary.md"] = shutil.copyfile(
            summary, os.path.join(docs_dir, f"{study}.md")
        )
    return copied


def replace_section(readme: str, section: str) -> str:
    """``readme`` with the text between the markers replaced by ``section``.

    Raises:
      ValueError: if the markers are missing or out of order.
    """
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(
            f"`readme` must hold {START!r} followed by {END!r}; "
            f"found start at {start}, end at {end}."
        )
    return readme[: start + len(START)] + "\n" + section.strip() + "\n" + readme[end:]


def build(
    results_dir: str,
    docs_dir: str,
    readme_dir: str,
    elapsed_seconds: float | None = None,
) -> tuple[str, dict]:
    """The section's Markdown and the run directories it was built from.

    ``elapsed_seconds``, when given, is how long the studies took to run
    (``scripts/reproduce.sh`` passes it), stated in the section.
    """
    runs = latest_runs(results_dir)
    missing = [s for s in STUDIES if s not in runs]
    if missing:
        logger.warning("no full run of %s under %s", ", ".join(missing), results_dir)
    loaded, figures = {}, {}
    for study, run_dir in runs.items():
        with open(os.path.join(run_dir, "results.json")) as handle:
            loaded[study] = json.load(handle)
        copied = copy_outputs(study, run_dir, docs_dir)
        figures[study] = {
            name: os.path.relpath(path, readme_dir).replace(os.sep, "/")
            for name, path in copied.items()
        }
    text = findings_text.section(loaded, figures, elapsed_seconds)
    return text, runs


def main(argv: Sequence[str] | None = None) -> str:
    """Command-line entry point; returns the new section's Markdown."""
    parser = argparse.ArgumentParser(
        prog="python scripts/findings.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--results", default="results", help="results directory")
    parser.add_argument("--readme", default="README.md", help="README to rewrite")
    parser.add_argument(
        "--docs",
        default=os.path.join("docs", "findings"),
        help="tracked folder for the copied figures and summaries",
    )
    parser.add_argument(
        "--elapsed-seconds",
        type=float,
        default=None,
        help="wall time the studies took, to state in the section",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(name)s %(levelname)s %(message)s")
    readme_dir = os.path.dirname(os.path.abspath(args.readme))
    text, runs = build(args.results, args.docs, readme_dir, args.elapsed_seconds)
    with open(args.readme) as handle:
        readme = handle.read()
    try:
        updated = replace_section(readme, text)
    except ValueError as error:
        parser.error(str(error))
    with open(args.readme, "w") as handle:
        handle.write(updated)
    logger.info("README findings rebuilt from %s", runs)
    return text


if __name__ == "__main__":
    main()

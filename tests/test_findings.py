"""scripts/findings.py on a tiny fake results directory, and CITATION.cff."""

import importlib.util
import json
import os
import pathlib
import re
import sys
import tomllib

import numpy as np
import pytest

from experiments import scaling

ROOT = pathlib.Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
ENV = {"device_kind": "cpu", "versions": {"jax": "0"}, "git": {"commit": None}}


def _load_findings():
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(
        "findings", ROOT / "scripts" / "findings.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


findings = _load_findings()


def _run(name, seed, losses, seconds_per_step, grads_per_step=1):
    steps = list(range(1, len(losses) + 1))
    return {
        "regime": "full",
        "optimizer": name,
        "seed": seed,
        "hparams": {"learning_rate": 0.1},
        "status": "max_steps",
        "steps": len(losses),
        "seconds": seconds_per_step * len(losses),
        "costs": {"value_evals": 0, "grad_evals": len(losses), "hvp_evals": 0},
        "final": {
            "train_loss": losses[-1],
            "valid_loss": losses[-1],
            "test_loss": losses[-1],
            "test_accuracy": 0.9,
        },
        "history": {
            "step": steps,
            "seconds": [seconds_per_step * s for s in steps],
            "loss": losses,
            "train_loss": losses,
            "value_evals": [0] * len(steps),
            "grad_evals": [grads_per_step * s for s in steps],
            "hvp_evals": [0] * len(steps),
        },
    }


def _compare(run_id, quick=False):
    # Losses are recorded before each step, times after it: sgd is at the
    # target 0.1 after 5 steps (5 s), sgd_annealed after 3, lbfgs after 2 (at
    # 5 gradients a step); newton never gets there.
    losses = {
        "sgd": [1.0, 0.6, 0.3, 0.2, 0.09],
        "sgd_annealed": [1.0, 0.5, 0.08, 0.05, 0.04],
        "lbfgs": [1.0, 0.05, 0.01, 0.005, 0.001],
        "newton": [1.0, 0.9, 0.8, 0.7, 0.6],
    }
    runs = [
        _run(name, seed, curve, 1.0, 5 if name == "lbfgs" else 1)
        for name, curve in losses.items()
        for seed in (0, 1)
    ]
    return {
        "study": "compare",
        "run_id": run_id,
        "config": {
            "problem": "digits_mlp",
            "problem_args": {},
            "regimes": ["full"],
            "seeds": [0, 1],
            "steps": 5,
            "seconds": 0,
            "grad_equivalents": 0,
            "tune": False,
            "targets": [0.1],
            "quick": quick,
        },
        "num_params": 2410,
        "environment": ENV,
        "cost_ratios": {"value_per_grad": 0.5, "hvp_per_grad": 2.0},
        "runs": runs,
    }


def _scaling():
    config = {
        "repeats": 3,
        "dtype": "float32",
        "fit_min_k": 0,
        "solver": "cholesky",
        "cg_steps": 10,
    }
    ks = [1000, 2000, 4000, 8000]
    laws = {
        "newton_step": lambda k: 1e-9 * k**3,
        "newton_solve": lambda k: 1e-10 * k**3,
        "newton_hessian": lambda k: 1e-7 * k**2,
        "hessian_free_step": lambda k: 1e-5 * k,
        "cg_product": lambda k: 1e-6 * k,
        "lbfgs_step": lambda k: 2e-6 * k,
    }
    records = [
        {
            "component": name,
            "k": k,
            "median_seconds": law(k),
            "memory": {"peak": 4 * k * k if name.startswith("newton") else 40 * k},
        }
        for name, law in laws.items()
        for k in ks
    ]
    return {
        "study": "scaling",
        "run_id": "scaling-run",
        "config": config,
        "environment": ENV,
        "records": records,
        **scaling.analyse(records, config),
    }


def _spectrum():
    points = [
        {
            "step": step,
            "loss": loss,
            "lambda_min": lam,
            "lambda_max": 1.0,
            "num_negative": negative,
            "negative_ratio": abs(lam),
            "trace": 10.0 - step,
        }
        for step, loss, lam, negative in ((0, 2.0, -0.5, 3), (5, 0.5, -0.01, 1))
    ]
    return {
        "study": "spectrum",
        "run_id": "spectrum-run",
        "config": {
            "hidden": [32],
            "optimizer": "adam",
            "steps": 5,
            "every": 5,
            "num_eigs": 2,
            "trace_samples": 8,
        },
        "num_params": 2410,
        "environment": ENV,
        "checkpoints": points,
    }


def _write(results_dir, run_id, results, pngs, stamp):
    directory = results_dir / run_id
    directory.mkdir(parents=True)
    with open(directory / "results.json", "w") as handle:
        json.dump(results, handle)
    (directory / "summary.md").write_text(f"# {run_id}\n")
    for name in pngs:
        (directory / name).write_bytes(PNG)
    os.utime(directory / "results.json", (stamp, stamp))


@pytest.fixture
def tree(tmp_path):
    results = tmp_path / "results"
    # The steps plot is not embedded, so it is not copied.
    plots = [
        "full_loss_vs_time.png",
        "full_loss_vs_grad_equivalents.png",
        "full_loss_vs_steps.png",
    ]
    _write(results, "compare-old", _compare("compare-old"), plots, 1000)
    _write(results, "compare-new", _compare("compare-new"), plots, 2000)
    # The newest compare is a smoke test: it must not be the one reported.
    _write(results, "compare-quick", _compare("compare-quick", True), plots, 3000)
    _write(results, "scaling-run", _scaling(), ["scaling_time.png"], 1000)
    _write(results, "spectrum-run", _spectrum(), ["spectrum.png"], 1000)
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# title\n\n## Findings\n\n{findings.START}\nold text\n{findings.END}\n\n"
        "## Tests and benchmarks\n"
    )
    return tmp_path


def test_latest_full_runs_are_chosen(tree):
    runs = findings.latest_runs(str(tree / "results"))
    assert {k: os.path.basename(v) for k, v in runs.items()} == {
        "compare": "compare-new",
        "scaling": "scaling-run",
        "spectrum": "spectrum-run",
    }


def test_section_states_the_numbers_and_embeds_copied_figures(tree):
    docs = tree / "docs" / "findings"
    docs.mkdir(parents=True)
    (docs / "compare_stale.png").write_bytes(PNG)  # from an earlier run
    argv = ["--results", str(tree / "results"), "--readme", str(tree / "README.md")]
    findings.main([*argv, "--docs", str(docs), "--elapsed-seconds", "1500"])
    readme = (tree / "README.md").read_text()
    assert readme.startswith("# title\n\n## Findings\n\n" + findings.START)
    assert readme.endswith(findings.END + "\n\n## Tests and benchmarks\n")
    assert "old text" not in readme and "compare-new" in readme
    assert "`scripts/reproduce.sh` (this run took 25 minutes on cpu)." in readme
    # Baseline: sgd_annealed (3 s, 3 gradients) beats sgd (5 s); lbfgs takes
    # 2 s (0.67x) but 10 gradient equivalents, so it wins in time only.
    line = next(x for x in readme.splitlines() if x.startswith("- To 0.1:"))
    assert line == (
        "- To 0.1: `sgd_annealed` takes 3 s and 3 gradient equivalents; "
        "faster: `lbfgs` (0.67x); less work: none."
    )
    assert (
        "of 2 other methods, 1 beat the better gradient descent (`sgd_annealed`, "
        "3 s) in wall time (`lbfgs` (0.67x)) and 0 in gradient equivalents (none)."
        in readme
    )
    assert (
        "`newton` does not get there on every seed: 5 steps (median), final train "
        "loss 0.6 at worst, stopped by max steps. One exact Newton step forms the "
        "Hessian from k Hessian-vector products: 4,820 gradient equivalents" in readme
    )
    assert "Targets: those given in the config." in readme
    # Exact power laws come back as exact slopes.
    assert "`newton_solve` | 3 | 3.00" in readme
    assert "`cg_product` | 1 | 1.00" in readme
    assert "lambda_min from -0.5 to -0.01" in readme
    assert "1 to 3 per probe, at 2 of 2 probes" in readme
    # Every embedded figure was copied next to the README and is found there.
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", readme)
    assert len(images) == 4
    for path in images:
        assert (tree / path).read_bytes() == PNG
    assert (docs / "compare.md").read_text() == "# compare-new\n"
    assert sorted(p.name for p in docs.iterdir()) == [
        "compare.md",
        "compare_full_loss_vs_grad_equivalents.png",
        "compare_full_loss_vs_time.png",
        "scaling.md",
        "scaling_time.png",
        "spectrum.md",
        "spectrum.png",
    ]


def test_automatic_targets_run_from_the_start_to_the_lowest_loss():
    import findings_text

    results = _compare("compare-auto")
    results["config"]["targets"] = None
    # Initial loss 1.0 (first recorded), lowest 0.001 (lbfgs): the targets are
    # 0.001 + 0.999 * 10^-j to 3 digits (each rounding under 1/10 of its gap).
    text = "\n".join(findings_text.compare_lines(results, {}))
    assert "targets: train loss 0.101, 0.011, 0.002;" in text
    assert "Targets (automatic): 1/10, 1/100 and 1/1000 of the way" in text
    assert "- To 0.002: neither gradient descent gets there" in text


def test_missing_study_and_missing_markers(tree):
    for run in ("scaling-run", "spectrum-run"):
        os.remove(tree / "results" / run / "results.json")
    text, runs = findings.build(str(tree / "results"), str(tree / "docs"), str(tree))
    assert set(runs) == {"compare"}
    assert text.count("No full run of this study yet.") == 2
    with pytest.raises(ValueError, match="`readme` must hold"):
        findings.replace_section("no markers here", text)


def test_citation_file_is_valid_cff():
    yaml = pytest.importorskip("yaml")
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    with open(ROOT / "pyproject.toml", "rb") as handle:
        project = tomllib.load(handle)["project"]
    assert citation["cff-version"] == "1.2.0"
    # The keys CFF 1.2.0 requires, with the types it requires.
    assert isinstance(citation["message"], str) and citation["message"]
    assert isinstance(citation["title"], str) and citation["title"]
    assert citation["authors"] == [{"name": "so_opt developers"}]
    assert citation["version"] == project["version"]
    assert citation["type"] == "software"
    assert np.all([isinstance(k, str) for k in citation["keywords"]])

"""The README's Python examples run as written and do what they say."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
    namespace: dict = {}
    exec(compile(BLOCKS[index], f"README.md[python {index}]", "exec"), namespace)
    printed = capsys.readouterr().out
    # Each example ends by printing a loss; it must be finite and small.
    loss = float(re.search(r"loss ([0-9.e+-]+)", printed).group(1))
    assert loss < 0.5, printed


def test_quickstart_is_two_commands_and_ci_runs_the_second():
    text = README.read_text()
    quickstart = text.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", quickstart, flags=re.DOTALL).group(1)
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2
    assert "experiments.compare" in commands[0]
    assert "pytest" in commands[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci

"""The set-up files agree with each other, and the committed notebooks are clean."""
import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def pip_lines(environment_yml: Path) -> list[str]:
    """The entries of an environment file's `pip:` list (no YAML library needed for this flat layout)."""
    text = environment_yml.read_text()
    block = text.split("- pip:", 1)[1]
    return [m.group(1).strip() for m in re.finditer(r"^\s+- ([^#\n]+)", block, re.M)]


def python_version(environment_yml: Path) -> str:
    return re.search(r"^\s+- python=(\S+)", environment_yml.read_text(), re.M).group(1)


def name_of(requirement: str) -> str:
    return re.split(r"[<>=!\[ ]", requirement, 1)[0].lower().replace("_", "-")


@pytest.fixture(scope="module")
def project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_binder_has_every_runtime_and_notebook_dependency_with_the_same_specifier(project):
    wanted = project["dependencies"] + project["optional-dependencies"]["notebooks"]
    binder = [line for line in pip_lines(ROOT / "binder" / "environment.yml") if not line.startswith("--")]
    by_name = {name_of(line): line for line in binder}
    for requirement in wanted:
        name = name_of(requirement)
        assert name in by_name, f"binder/environment.yml lacks {requirement}"
        if name != "torch":  # binder pins the CPU build (below)
            assert by_name[name] == requirement, f"binder has {by_name[name]!r}, pyproject {requirement!r}"
    extra = set(by_name) - {name_of(r) for r in wanted}
    assert not extra, f"binder/environment.yml has packages pyproject.toml does not: {extra}"


def test_one_torch_pin_everywhere(project):
    pins = {
        "environment.yml": next(line for line in pip_lines(ROOT / "environment.yml") if name_of(line) == "torch"),
        "binder/environment.yml": next(line for line in pip_lines(ROOT / "binder" / "environment.yml")
                                       if name_of(line) == "torch"),
        ".ci/run": re.search(r"torch==\S+", (ROOT / ".ci" / "run").read_text()).group(0),
        "README.md": re.search(r"torch==[\d.]+", (ROOT / "README.md").read_text()).group(0),
    }
    versions = {where: pin.split("==")[1].split("+")[0] for where, pin in pins.items()}
    assert len(set(versions.values())) == 1, versions
    assert pins["binder/environment.yml"].endswith("+cpu"), "Binder has no GPU: pin the CPU build"
    assert any("download.pytorch.org/whl/cpu" in line for line in pip_lines(ROOT / "binder" / "environment.yml"))
    torch_requirement = next(r for r in project["dependencies"] if name_of(r) == "torch")
    assert torch_requirement.startswith("torch>=")  # a range the pin satisfies, so pip never swaps torch


def test_both_environments_use_one_python_and_install_the_package():
    assert python_version(ROOT / "environment.yml") == python_version(ROOT / "binder" / "environment.yml")
    assert "-e .[test]" in pip_lines(ROOT / "environment.yml")
    post_build = (ROOT / "binder" / "postBuild").read_text()
    assert "pip install --no-deps -e ." in post_build  # every dependency already comes from binder/environment.yml
    start = (ROOT / "binder" / "start").read_text()
    assert "GRADOP_MODEL=toy" in start and 'exec "$@"' in start


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_are_clean(path):
    notebook = json.loads(path.read_text())
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    assert "widgets" not in notebook["metadata"], "widget state is saved: run notebooks/regenerate.py"
    assert path.stat().st_size <= 2 * 2**20
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] or not c["source"] for c in code[:1]), "outputs are committed (notebooks/regenerate.py)"
    for c in code:  # the one error a notebook may show is an exercise's blank, marked for nbval
        errors = [o for o in c["outputs"] if o.get("output_type") == "error"]
        if errors:
            assert "raises-exception" in c["metadata"].get("tags", []), "".join(c["source"])[:200]
            assert [o["ename"] for o in errors] == ["NotImplementedError"], errors[0]["ename"]
    assert any("nbval-check-output" in c["metadata"].get("tags", []) for c in code), "no cell checks a number in CI"
    assert not any("# NBVAL_" in "".join(c["source"]) for c in code), "nbval's markers go in cell tags, not the code"
    assert "GRADOP_MODEL" in "".join(code[0]["source"]), "the first code cell is the configuration cell"


def test_there_are_five_numbered_notebooks():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_", "05_"]


def test_the_tutorials_prose_is_lean():
    """At most 4,500 words of markdown in all five notebooks (numbers and symbols counted as words too): the pictures
    and tables carry the claims."""
    prose = "\n".join("".join(c["source"]) for path in NOTEBOOKS for c in json.loads(path.read_text())["cells"]
                      if c["cell_type"] == "markdown")
    words = len(re.findall(r"\w+", prose))
    assert 3000 < words <= 4500, words


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_open_with_goals_close_with_a_summary_and_exercises(path):
    cells = json.loads(path.read_text())["cells"]
    prose = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "**What you will learn**" in prose and "## Summary" in prose
    exercises = re.findall(r"^\d+\. ", prose.split("## Try this", 1)[-1], re.M) if "## Try this" in prose else []
    assert len(exercises) >= 2, "at least two 'Try this' exercises"
    for link in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", prose):  # pictures the prose shows are committed
        assert (path.parent / link).is_file(), link

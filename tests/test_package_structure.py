"""The package's shape: no import cycles (function-level imports included) and the core never imports the toy world.

Read from the source with `ast`, so every module that exists when the test runs is covered, imported or not.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gradop"
NOTEBOOK_HELPERS = "gradop.notebook"  # above the core: may look up the toy world's judge


def in_toy_world(name: str) -> bool:
    return name == "gradop.toy" or name.startswith("gradop.toy.")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known) -> set[str]:
    """The package modules `name` imports anywhere in its source (module level, functions, `if` branches, ...).

    `from . import checks` names the submodule `gradop.checks`; `from .images import load_image` the module
    `gradop.images` (a package's `__init__` is only named when the import names nothing below it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            # the deepest package module the name reaches: gradop.toy.judge.load_judge -> gradop.toy.judge
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
        if isinstance(node, ast.ImportFrom) and any(t in known and t != base for t in
                                                    (f"{base}.{a.name}" for a in node.names)):
            found.discard(base)  # `from . import checks` imports gradop.checks, not gradop/__init__ for itself
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "grey"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "grey":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "black"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each group of modules that import each other (directly or through others), with one cycle through it."""
    found, grouped = [], set()
    for node in sorted(graph):
        if node in grouped or node not in reachable(graph, node):
            continue
        group = {other for other in reachable(graph, node) if node in reachable(graph, other)}
        grouped |= group
        cycle = find_cycle({name: graph[name] & group for name in group})
        found.append(f"{{{', '.join(sorted(group))}}}: " + " -> ".join(cycle))
    return found


def layers(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph with the toy world as one node: a core module the toy imports must not import the toy back."""
    def layer(name):
        return "gradop.toy" if in_toy_world(name) else name

    collapsed = {}
    for name, targets in graph.items():
        collapsed.setdefault(layer(name), set()).update(layer(t) for t in targets)
    return {name: targets - {name} for name, targets in collapsed.items()}


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert {"gradop.methods", "gradop.runs", "gradop.models"} <= graph["gradop.cli"]  # relative, and in functions
    assert "gradop.pipeline" in graph["gradop.methods"]  # imported inside a function
    assert {"gradop.testing", "gradop.toy.world"} <= graph["gradop.toy.components"]  # `..testing`, `.world`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycles({"a": {"b"}, "b": {"a", "c"}, "c": set(), "d": {"d2"}, "d2": {"d"}}) == [
        "{a, b}: a -> b -> a", "{d, d2}: d -> d2 -> d"]


def test_no_import_cycles_between_modules():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(found)


def test_no_import_cycles_between_the_core_and_the_toy_world():
    found = cycles(layers(import_graph()))
    assert not found, "import cycles through the toy world (gradop.toy.* as one node):\n" + "\n".join(found)


def test_only_the_toy_world_and_the_notebook_helpers_import_the_toy_world():
    offenders = {name: sorted(filter(in_toy_world, targets)) for name, targets in import_graph().items()
                 if not in_toy_world(name) and name != NOTEBOOK_HELPERS and any(map(in_toy_world, targets))}
    assert not offenders, f"the core imports gradop.toy: {offenders}"


def test_checks_is_a_leaf():
    """Every method's argument checks: they import nothing from gradop but `images`, itself a leaf."""
    graph = import_graph()
    assert graph["gradop.checks"] <= {"gradop.images"}
    assert graph["gradop.images"] == set()


def test_the_names_checks_accepts_are_the_ones_the_library_has():
    """`checks` holds the names it validates; the modules that act on them must have exactly those."""
    import torch

    from gradop import checks, optimize, painting

    assert set(checks.OPTIMIZER_NAMES) == set(optimize.OPTIMIZERS)
    target = torch.zeros(1, 3, 16, 16)
    target[:, 0, :8] = 1  # a painting of two flat colours (median_palette takes its palette from it)
    for name in checks.PAINTING_FUNCTIONS:  # each accepted name builds a painting function
        assert painting.get_painting_function(name, target)(target).shape == target.shape

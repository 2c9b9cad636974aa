"""The package's floors: every module imports only from its own floor or below, read from the source with
ast (nothing is imported), lazy imports inside functions included. A new module must be given a floor."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "semiseg"

# bottom first; a module belongs to the floor of the longest prefix that names it ("semiseg" names only the
# package itself, so a new top-level module has no floor until it is given one)
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["semiseg.atomic", "semiseg.grid", "semiseg.profiling", "semiseg.argtypes", "semiseg.precision"]),
    ("config", ["semiseg.config"]),
    ("data", ["semiseg.data"]),
    ("blocks", ["semiseg.distributed", "semiseg.networks", "semiseg.losses", "semiseg.evaluation", "semiseg.postprocess",
                "semiseg.runtime"]),
    ("methods", ["semiseg.methods"]),
    ("engine", ["semiseg.engine"]),
    ("prediction", ["semiseg.inference", "semiseg.deploy"]),
    ("runs", ["semiseg.run"]),
    ("pipelines", ["semiseg.selftrain", "semiseg.benchmark"]),
    ("reports", ["semiseg.report", "semiseg.demo"]),
    ("cli", ["semiseg.cli", "semiseg.__main__", "semiseg.inference.cli", "semiseg.selftrain.cli", "semiseg.benchmark.cli"]),
    ("api", ["semiseg"]),  # semiseg/__init__.py: the lazy public API over everything
]


def floor(module: str) -> int:
    best, level = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or (p != "semiseg" and module.startswith(p + "."))) and len(p) > best:
                best, level = len(p), i
    assert level is not None, f"{module} has no floor in tests/test_layers.py LAYERS"
    return level


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) of every semiseg import in the source, relative ones resolved, lazy ones included."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            mod = ".".join(x for x in (base, node.module or "") if x)
            # `from semiseg.x import y` may name a module y: judge the deepest name that is one
            found += [(node.lineno, f"{mod}.{a.name}" if _is_module(f"{mod}.{a.name}") else mod) for a in node.names]
    return [(line, m) for line, m in found if m == "semiseg" or m.startswith("semiseg.")]


def _is_module(name: str) -> bool:
    p = PACKAGE.parent.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def test_every_module_has_a_floor() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        floor(module_name(path))  # asserts, naming the module


def test_every_import_goes_down_or_sideways() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = module_name(path)
        for line, target in imports(path):
            if floor(target) > floor(me):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} {me} ({LAYERS[floor(me)][0]}) -> "
                              f"{target} ({LAYERS[floor(target)][0]})")
    assert not upward, "imports from a lower floor to a higher one:\n" + "\n".join(upward)


def test_the_walker_sees_lazy_relative_and_submodule_imports() -> None:
    """The check itself: imports inside functions count, relative ones resolve, ``from package import module``
    is judged by the module, and the floors order the pipeline as DESIGN.md draws it."""
    src = ("from semiseg.engine import trainer\n"
           "def f():\n    from .ema import ema_update\n    import semiseg.run\n"
           "from .. import config\n")
    assert [m for _, m in imports_in(src, "semiseg.methods.base", False)] == [
        "semiseg.engine.trainer", "semiseg.config", "semiseg.methods.ema", "semiseg.run"]
    assert floor("semiseg.engine.trainer") > floor("semiseg.methods.base")  # would be reported
    assert (floor("semiseg.inference.cli") > floor("semiseg.run") > floor("semiseg.inference.predictor")
            > floor("semiseg.engine.trainer"))
    assert floor("semiseg.atomic") < floor("semiseg.config") < floor("semiseg.data.io") < floor("semiseg.methods")
    assert floor("semiseg.grid") < floor("semiseg.deploy.predict") and floor("semiseg") == len(LAYERS) - 1

"""The package's shape: imports point down the layers the README's code map lists, no module shadows a builtin,
and no two modules define a public function or class of one name unless it is a shared interface."""

import ast
import builtins
import collections
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "reft_jax"
# Bottom first; a module may import from its own layer's packages and the layers below.
LAYERS = [{"errors"}, {"config"}, {"models", "data"}, {"runtime"}, {"refusal"}, {"train", "evaluation"},
          {"experiment"}, {"stages"}, {"pipeline", "bench", "serve"}, {"cli", "__init__"}]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
# One name in several modules on purpose: each stage module's `run`, each filter stage's `flags`, the benchmark's
# two sides (JAX and PyTorch) and the PyTorch peers of the JAX losses it times.
INTERFACES = {"run", "flags", "prepare", "measure", "setup", "matmul_flops", "cross_entropy", "distillation_kl",
              "refusal_regularizer"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, ("__init__" if parts == ("__init__",) else parts[0]), ast.parse(path.read_text())


def _imported_units(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "reft_jax":
            parts = node.module.split(".")
            names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            yield node.lineno, [n for n in names if n in RANK]


def test_every_top_level_module_and_package_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert units - {"configs"} == set(RANK), "add a new package to LAYERS and to the README's code map"


def test_imports_point_down():
    upward = [f"{path.relative_to(PACKAGE.parent)}:{line} {unit} -> {target}"
              for path, unit, tree in _modules() for line, targets in _imported_units(tree)
              for target in targets if RANK[target] > RANK[unit]]
    assert not upward


def test_no_module_is_named_after_a_builtin():
    assert not [p for p in PACKAGE.rglob("*.py") if p.stem in dir(builtins)]


def test_no_two_public_definitions_share_a_name():
    where = collections.defaultdict(list)
    for path, _, tree in _modules():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                where[node.name].append(str(path.relative_to(PACKAGE)))
    assert {name: paths for name, paths in where.items() if len(paths) > 1 and name not in INTERFACES} == {}

"""The package's layers point one way (docs/STYLE: algorithm <- models <- rollout <- rewards <- train), and
no module imports another module's private name."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "grpo"
LAYERS = ["algorithm", "models", "rollout", "rewards", "train"]


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("grpo"):
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("grpo"):
                    yield a.name, []


def test_no_layer_imports_from_a_layer_above_it():
    upward = []
    for layer in LAYERS:
        for path in (SRC / layer).rglob("*.py"):
            for module, _ in _imports(path):
                parts = module.split(".")
                if len(parts) > 1 and parts[1] in LAYERS and LAYERS.index(parts[1]) > LAYERS.index(layer):
                    upward.append(f"{path.relative_to(SRC)} imports {module}")
    assert upward == []


def test_no_private_name_is_imported_from_another_module():
    private = [f"{path.relative_to(SRC)}: {name} from {module}"
               for path in SRC.rglob("*.py") for module, names in _imports(path)
               for name in names if name.startswith("_") and name != "__version__"]
    assert private == []

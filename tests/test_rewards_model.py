"""RewardModel on a tiny sequence classifier built offline (no downloads)."""

import string

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from grpo.errors import UserError  # noqa: E402
from grpo.rewards import RewardModel, RewardSpec, compute_rewards  # noqa: E402


def char_tokenizer():
    """A character-level tokenizer: one id per printable character, [PAD]=0, [UNK]=1."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1}
    for ch in string.printable:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def tiny_config(tokenizer, **overrides):
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    kwargs.update(overrides)
    return transformers.LlamaConfig(**kwargs)


@pytest.fixture(scope="module")
def tiny_rm_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_rm")
    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    model = transformers.LlamaForSequenceClassification(tiny_config(tokenizer))
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0)  # a visible spread of scores, not ~0.02 * noise
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


PROMPTS = ["Q: 2+2?\nA:", "Q: capital of France?\nA:", "Q: 7*6?\nA:", "Q: hi\nA:", "Q: 1-1?\nA:"]
COMPLETIONS = [" 4", " Paris, a city on the Seine.", " 42", " hello there, how are you doing?", " 0"]


def test_one_float_per_sample_and_batching_does_not_change_values(tiny_rm_path):
    one_by_one = RewardModel(tiny_rm_path, device="cpu", batch_size=1)(PROMPTS, COMPLETIONS)
    batched = RewardModel(tiny_rm_path, device="cpu", batch_size=3)(PROMPTS, COMPLETIONS, completion_ids=None)
    assert len(one_by_one) == len(PROMPTS) and all(isinstance(s, float) for s in one_by_one)
    assert len(set(one_by_one)) == len(one_by_one)  # different texts, different scores
    # Right padding + causal attention: pad tokens after a sample cannot change its score.
    assert batched == pytest.approx(one_by_one, abs=1e-5)


def test_scores_the_whole_text_and_truncates_on_the_left(tiny_rm_path):
    rm = RewardModel(tiny_rm_path, device="cpu", max_length=8)
    # Only the last 8 characters are seen, so a different beginning gives the same score.
    a, b = rm(["xxxxxxxxxxxx", "yyyyyyyyyyyyyyyy"], [" the end", " the end"])
    assert a == pytest.approx(b, abs=1e-6)


def test_reward_model_in_compute_rewards_stays_in_process(tiny_rm_path):
    rm = RewardModel(tiny_rm_path, device="cpu")

    class NoPool:
        def submit(self, *args, **kwargs):
            raise AssertionError("the reward model must not be sent to the pool")

    result = compute_rewards(
        [RewardSpec("rm", rm, weight=2.0)], PROMPTS[:2], COMPLETIONS[:2], [[1], [2]], {}, pool=NoPool()
    )
    assert result.total == pytest.approx([2 * s for s in rm(PROMPTS[:2], COMPLETIONS[:2])], abs=1e-6)


def test_reward_model_errors(tmp_path, tiny_rm_path):
    with pytest.raises(UserError, match="reward model not found: .*config.json"):
        RewardModel(tmp_path / "nothing", device="cpu")

    tokenizer = char_tokenizer()
    two_labels = tmp_path / "two_labels"
    transformers.LlamaForSequenceClassification(tiny_config(tokenizer, num_labels=2)).save_pretrained(
        two_labels
    )
    tokenizer.save_pretrained(two_labels)
    with pytest.raises(UserError, match="has num_labels=2; a reward model outputs one score"):
        RewardModel(two_labels, device="cpu")

    causal_lm = tmp_path / "causal_lm"
    transformers.LlamaForCausalLM(tiny_config(tokenizer)).save_pretrained(causal_lm)
    tokenizer.save_pretrained(causal_lm)
    with pytest.raises(UserError, match="no trained classification head"):
        RewardModel(causal_lm, device="cpu")

    with pytest.raises(UserError, match="batch_size must be an integer >= 1"):
        RewardModel(tiny_rm_path, device="cpu", batch_size=0)

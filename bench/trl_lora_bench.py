#!/usr/bin/env python3
"""The peer harness (TRL's GRPOTrainer, /work/shared/peers/trl_grpo_bench.py) with LoRA adapters.

    PEERS=/work/shared/peers python bench/trl_lora_bench.py MODEL_DIR [the harness's own options]

Runs the harness unchanged except that its trainer is given `peft_config`: r 16, alpha 32, no dropout,
every attention and MLP projection (q, k, v, o, gate, up, down), as `grpo`'s `model.lora={r: 16,
alpha: 32}` and `bench/bench_grpo.py --lora`. TRL then takes the reference from the base model with the
adapter disabled, as grpo does. Needs peft in the TRL environment (bench/run_real_bench.sh installs it).
"""

import importlib.util
import os
from pathlib import Path

PEERS = Path(os.environ.get("PEERS", Path(__file__).resolve().parents[2] / "shared" / "peers"))


def main() -> None:
    spec = importlib.util.spec_from_file_location("trl_grpo_bench", PEERS / "trl_grpo_bench.py")
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    from peft import LoraConfig

    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    class LoraTrainer(peer.TimedGRPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, peft_config=lora, **kwargs)

    peer.TimedGRPOTrainer = LoraTrainer  # main() builds its trainer from this module-level name
    peer.main()


if __name__ == "__main__":
    main()

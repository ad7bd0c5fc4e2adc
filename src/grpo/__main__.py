from grpo.cli import entry

entry()

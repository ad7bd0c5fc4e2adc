from grpo.commands.cli import entry

entry()

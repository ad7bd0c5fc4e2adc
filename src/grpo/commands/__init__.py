"""The applications built on the library: the `grpo` command line (cli.py) and the commands that are more
than a call into the library (demo, eval, plan, reproduce). Nothing outside this package imports it."""

"""Shared utilities of the library and the commands: seeding, deadlines for a call, loading a function
named by a reference ("file.py:function", "package.module:function"), and JSON as run files write it."""

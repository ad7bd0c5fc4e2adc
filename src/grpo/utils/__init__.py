"""Shared utilities of the library and the commands: seeding, deadlines for a call, and loading a
function named by a reference ("file.py:function", "package.module:function")."""

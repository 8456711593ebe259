"""The commands behind ``python -m shelfdet <command>`` (and so the Makefile): argument parsing and output.

``cli`` is the front door and its table names each command's module here (one
``main`` each); ``launching`` holds what the AWS commands share (flags, error
lines, progress on stderr).
"""

"""The commands behind ``python -m shelfdet <command>`` (and so the Makefile): argument parsing and output.

``cli`` is the front door; every other module here is one command's ``main``.
"""

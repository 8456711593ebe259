"""The library: hyperparameters, configs, models, checkpoints, photos, inference, evaluation.

Nothing here parses a command line or prints; the commands (``shelfdet.commands``)
do both, and every other room builds on this one.
"""

"""The library: hyperparameters, configs, models, checkpoints, photos, inference, evaluation.

Nothing here parses a command line or prints; the commands (``shelfdet.commands``)
do both, and every other room builds on this one.
"""

# The dataset's channels, in the order they are built, uploaded and listed; a plain tuple here so that the
# data room (and ``make clean``, which runs before ``make setup``) gets it without importing numpy.
CHANNELS = ("training", "validation", "test")

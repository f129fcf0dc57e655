"""Training: data from the database, the temporal split, the training loop, checkpoints, evaluation runs.

Imports torch: serving code must not import this package.
"""

from twotower.train.run import TrainOptions, TrainResult, train
from twotower.train.split import Split, temporal_split

__all__ = ["Split", "TrainOptions", "TrainResult", "temporal_split", "train"]

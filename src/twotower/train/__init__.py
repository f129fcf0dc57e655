"""Training: data from the database, the temporal split, the training loop, checkpoints, evaluation runs.

Imports torch: serving code must not import this package.
"""

from twotower.evaluation.split import Split, temporal_split
from twotower.train.run import TrainOptions, TrainResult, train

__all__ = ["Split", "TrainOptions", "TrainResult", "temporal_split", "train"]

"""Batch jobs: re-embedding videos and users for a model version in checkpointed, claimable chunks."""

from twotower.jobs.batch import BatchOptions, BatchPlan, BatchResult, plan_batch, run_batch

__all__ = ["BatchOptions", "BatchPlan", "BatchResult", "plan_batch", "run_batch"]

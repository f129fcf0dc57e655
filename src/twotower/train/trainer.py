"""The training loop: shuffled epochs of examples, early stopping on validation Recall@20, checkpoints.

Determinism: every epoch draws from generators seeded by ``(seed, epoch)``, so a run resumed from the
checkpoint of epoch k continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from twotower.errors import InputError
from twotower.evaluation.ranking import top_k
from twotower.features.examples import Histories
from twotower.model.config import TowerConfig
from twotower.model.loss import retrieval_loss
from twotower.model.towers import TwoTowerModel
from twotower.train.batches import DeviceHistories
from twotower.train.distributed import World
from twotower.train.optim import SPARSE_IDS_FROM, build_optimizer
from twotower.train.tables import FeatureTables

__all__ = ["EpochStats", "TrainConfig", "Trainer", "epoch_shard", "recall_at_k"]


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    # "constant", or "cosine": the learning rate follows half a cosine from its value to 0 over `epochs`
    # (a function of the step, so a resumed run and the refit follow the same schedule)
    lr_schedule: str = "constant"
    id_weight_decay: float = 0.0  # decoupled (AdamW) weight decay on the item-ID embeddings only
    seed: int = 0
    patience: int = 5  # epochs without a better validation Recall@20 before stopping
    max_valid_users: int = 2000
    precision: str = "fp32"  # or "bf16": autocast of both towers (the loss stays fp32)
    sparse_ids: bool | None = None  # update the ID tables row by row (train.optim); None: by catalog size


@dataclass
class EpochStats:
    epoch: int
    loss: float
    valid_recall_at_20: float
    examples: int
    seconds: float
    learning_rate: float = 0.0

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    best_recall: float = -1.0
    best_epoch: int = 0
    history: list[EpochStats] = field(default_factory=list)


VALID_SCORES = 64 * 2**20  # the most scores (float32) validation holds at once: users x catalog, in blocks


def recall_at_k(
    scores: npt.NDArray[np.float32],
    seen: list[npt.NDArray[np.int64]],
    targets: list[npt.NDArray[np.int64]],
    k: int = 20,
) -> float:
    """Mean over users of hits in the top k / min(k, |targets|); ``seen`` items are excluded from ranking."""

    if not targets:
        return 0.0
    rows = np.repeat(np.arange(len(seen)), [s.size for s in seen])
    scores[rows, np.concatenate(seen)] = -np.inf
    hits = [np.isin(tgt, top).sum() / min(k, tgt.size) for top, tgt in zip(top_k(scores, k), targets, strict=True)]
    return float(np.mean(hits))


def scheduled_lr(config: TrainConfig, progress: float) -> float:
    """The learning rate after ``progress`` epochs (0 at the start of training)."""
    if config.lr_schedule == "cosine":
        t = min(max(progress / max(config.epochs, 1), 0.0), 1.0)
        return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * t))
    return config.learning_rate


class Trainer:
    def __init__(
        self,
        model: TwoTowerModel,
        tables: FeatureTables,
        histories: Histories,
        config: TrainConfig,
        valid: tuple[npt.NDArray[np.int64], list[npt.NDArray[np.int64]]] | None = None,
        world: World | None = None,
    ) -> None:
        self.model = model
        self.tables = tables
        self.hist = histories
        self.config = config
        self.cfg: TowerConfig = model.cfg
        self.valid = valid  # (users, their validation likes)
        self.world = world or World()
        self.rank, self.world_size = self.world.rank, self.world.size
        self.device = tables.device
        # a CPU looks up only the bags' non-zero entries; an accelerator keeps fixed shapes (no wait for a count)
        model.encoder.compact = self.device.type == "cpu"
        # a large catalog's ID tables are updated row by row on a CPU (train.optim); not with weight decay (which
        # SparseAdam lacks), nor across processes (DDP would all-reduce sparse gradients) or on an accelerator
        self.sparse_ids = (
            self.device.type == "cpu" and self.world.size == 1 and model.cfg.n_items >= SPARSE_IDS_FROM
            and config.weight_decay == 0 and config.id_weight_decay == 0
        ) if config.sparse_ids is None else config.sparse_ids  # fmt: skip
        if self.sparse_ids and (config.weight_decay or config.id_weight_decay):
            raise InputError(
                "sparse ID tables (SparseAdam) take no weight decay: set sparse_ids or the decay, not both"
            )
        self.optimizer = build_optimizer(
            model, config.learning_rate, config.weight_decay, config.id_weight_decay, self.sparse_ids
        )
        self.state = TrainState()
        self.train_model: torch.nn.Module = model  # the DDP wrapper when distributed
        self.batches = DeviceHistories(histories, self.device)
        ex_users, ex_items, ex_p, ex_q = histories.examples()
        self.ex_users, self.ex_items, self.ex_p, self.ex_q = ex_users, ex_items, ex_p, ex_q
        counts = histories.item_counts(tables.n_items).astype(np.float64)
        # log of each item's expected count among a step's in-batch candidates (logQ correction)
        prob = counts / max(counts.sum(), 1.0)
        log_q = (
            np.log(np.maximum(prob * config.batch_size * self.cfg.positives_per_state, 1e-12)) * model.cfg.logq_weight
        )
        self.log_q = torch.from_numpy(log_q.astype(np.float32)).to(self.device)

    @property
    def n_examples(self) -> int:
        return int(self.ex_users.size)

    @property
    def states_per_epoch(self) -> int:
        """The user states an epoch visits: all of them, each with its next k likes; with sampled targets as many
        positives as there are training likes (1/k of the states, k targets each)."""
        k = self.cfg.positives_per_state
        return -(-self.n_examples // k) if self.cfg.sampled_targets else self.n_examples

    def _batch_starts(self, n_states: int) -> list[int]:
        """Where a rank's steps start among its ``n_states`` states; a last batch of one positive is skipped
        (in-batch negatives need two)."""
        bs, k = self.config.batch_size, self.cfg.positives_per_state
        return [i for i in range(0, n_states, bs) if min(bs, n_states - i) * k >= 2]

    @property
    def positives_per_epoch(self) -> int:
        """What an epoch trains on, all ranks together (every rank gets an equal shard: ``epoch_shard``)."""
        per_rank = -(-self.states_per_epoch // self.world_size)
        bs = self.config.batch_size
        kept = sum(min(bs, per_rank - i) for i in self._batch_starts(per_rank))
        return kept * self.world_size * self.cfg.positives_per_state

    # -- one epoch ------------------------------------------------------------------------------------------
    def _batch_loss(self, states: torch.Tensor, liked_total: int, gen: torch.Generator) -> torch.Tensor:
        """Loss of a batch of user states (history prefixes), each with ``positives_per_state`` positives; built on
        the device from the device-resident index (``liked_total``: the batch's liked pairs, counted on the host)."""
        cfg, dev = self.cfg, self.batches
        k = self.cfg.positives_per_state
        users, p = dev.ex_users[states], dev.ex_p[states]
        if cfg.history == "profile":
            like_rows, like_mask, nope_rows, nope_mask, stats = dev.user_batch(users)
            items, like_mask = dev.hide_likes(users, k, gen, like_mask)
        else:
            like_rows, like_mask, nope_rows, nope_mask, stats = dev.user_batch(users, p, dev.ex_q[states])
            if cfg.target_window > 1:
                items = dev.future_likes(users.repeat_interleave(k), p.repeat_interleave(k), cfg.target_window, gen)
            else:
                items = dev.next_likes(users, p, k)
        user_in = self.tables.gather_user(like_rows, like_mask, nope_rows, nope_mask, stats)
        m = min(cfg.uniform_negatives, self.tables.n_items)
        uniform_ids = torch.randint(0, self.tables.n_items, (m,), generator=gen, device=self.device)
        parts = [items, uniform_ids]
        hard_mask = None
        if cfg.hard_negatives:
            hard_rows, has = dev.sample_nopes(users, gen)
            parts.append(hard_rows)
            hard_mask = has
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16"):
            u, v = self.train_model(user_in, self.tables.items(torch.cat(parts)))
        u, v = u.float(), v.float()
        b = items.shape[0]
        # the k positives of state r are rows r*k .. r*k+k-1 of the candidates; the loss computes each state's
        # logits once for all of them
        groups = torch.arange(states.shape[0], device=self.device).repeat_interleave(k) if k > 1 else None
        return retrieval_loss(
            u,
            v[:b],
            items,
            self.log_q[items],
            cfg.temperature,
            uniform=v[b : b + m],
            uniform_ids=uniform_ids,
            uniform_log_q=math.log(m / self.tables.n_items) * cfg.logq_weight,
            hard=v[b + m :] if cfg.hard_negatives else None,
            hard_mask=hard_mask,
            groups=groups,
            liked=dev.liked(users, liked_total) if cfg.mask_likes else None,
            catalog_size=self.tables.n_items + 1,  # the padding row too
        )

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train_epoch(self, epoch: int, progress: Callable[[int, float], None] | None = None) -> EpochStats:
        self.model.train()
        rng = np.random.default_rng([self.config.seed, epoch])
        k = self.cfg.positives_per_state
        # every rank draws the same permutation and takes an equal shard of it (the same steps on every rank)
        order = epoch_shard(rng.permutation(self.n_examples)[: self.states_per_epoch], self.rank, self.world_size)
        # ranks sample their negatives and dropout masks independently
        torch.manual_seed(self.config.seed * 100_003 + epoch + 7919 * self.rank)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(np.random.SeedSequence([self.config.seed, epoch, self.rank]).generate_state(1)[0]))
        states = torch.from_numpy(order).to(self.device)  # the epoch's only host-to-device copy
        bs = self.config.batch_size  # user states per step, k positives each
        starts = self._batch_starts(order.size)
        liked = [self.batches.liked_total(self.ex_users[order[i : i + bs]]) if self.cfg.mask_likes else 0
                 for i in starts]  # fmt: skip
        start, seen = time.perf_counter(), 0
        total = torch.zeros((), device=self.device)
        n_batches = max(-(-order.size // bs), 1)
        last = float("nan")
        for step, (i, n_liked) in enumerate(zip(starts, liked, strict=True), start=1):
            lr = scheduled_lr(self.config, epoch - 1 + (i // bs) / n_batches)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss = self._batch_loss(states[i : i + bs], n_liked, gen)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
            total += loss.detach()
            n = min(bs, order.size - i) * k
            seen += n
            if progress is not None:
                # reading the loss waits for the device: on an accelerator, only every 50 steps
                if self.device.type == "cpu" or step % 50 == 0 or step == len(starts):
                    last = float(total) / step
                progress(n * self.world_size, last)
        # one collective per epoch: the mean loss and the examples of all ranks; rank 0's validation figure
        loss_sum, steps, seen_all = self.world.sum_floats([float(total), float(len(starts)), float(seen)])
        seconds = time.perf_counter() - start
        [recall] = self.world.broadcast_floats([self.validate() if self.rank == 0 else float("nan")])
        stats = EpochStats(epoch, loss_sum / max(steps, 1), recall, int(seen_all), seconds, self.learning_rate)
        self.state.history.append(stats)
        self.state.epoch = epoch
        return stats

    # -- validation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def user_embeddings(self, users: npt.NDArray[np.int64], batch_size: int = 1024) -> npt.NDArray[np.float32]:
        self.model.eval()
        out = []
        for i in range(0, users.size, batch_size):
            inputs = self.tables.user_inputs(self.hist.batch(users[i : i + batch_size]))
            out.append(self.model.user_tower(*inputs).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.cfg.embedding_dim), dtype=np.float32)

    @torch.no_grad()
    def validate(self) -> float:
        if self.valid is None or self.valid[0].size == 0:
            return float("nan")
        self.model.eval()
        users, targets = self.valid
        items = self.tables.embed_items(self.model)
        vectors = self.user_embeddings(users)
        hits = 0.0
        # a block of users at a time: all 2,000 validation users against a 1M catalog at once would be an 8 GB
        # score matrix; a block is at most VALID_SCORES floats (256 MB) whatever the catalog
        block = max(1, VALID_SCORES // max(items.shape[0], 1))
        for i in range(0, users.size, block):
            seen = [
                self.hist.like_items[self.hist.like_start[u] : self.hist.like_start[u] + self.hist.like_count[u]]
                for u in users[i : i + block]
            ]
            part = targets[i : i + block]
            hits += recall_at_k(vectors[i : i + block] @ items.T, seen, part) * len(part)
        return hits / max(len(targets), 1)

    @property
    def validates(self) -> bool:
        return self.valid is not None and self.valid[0].size > 0

    def improved(self, stats: EpochStats) -> bool:
        """Record the epoch; True when it is the best so far on validation. Without validation (the refit) the
        latest epoch is the best; with it, a NaN figure (a diverged model) never is."""
        recall = stats.valid_recall_at_20
        if not self.validates or (not math.isnan(recall) and recall > self.state.best_recall):
            self.state.best_recall = stats.valid_recall_at_20
            self.state.best_epoch = stats.epoch
            return True
        return False

    def should_stop(self) -> bool:
        return self.state.epoch - self.state.best_epoch >= self.config.patience


def epoch_shard(order: npt.NDArray[np.int64], rank: int, world_size: int) -> npt.NDArray[np.int64]:
    """Rank ``rank``'s share of the epoch ``order``: every rank gets exactly ``ceil(len / world_size)`` states
    (the order is padded by wrapping around, as DistributedSampler does), so every rank runs the same number of
    steps of the same sizes and no all-reduce waits for a rank that has finished its epoch."""
    if world_size <= 1:
        return order
    per_rank = -(-order.size // world_size)
    return np.resize(order, per_rank * world_size)[rank::world_size]

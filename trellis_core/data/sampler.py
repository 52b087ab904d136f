"""Samplers: multi-source mixing, voxel-balanced distribution over ranks, mid-epoch resume.

:class:`BalancedBatchSampler` is a ``batch_sampler`` for ``torch.utils.data.DataLoader``. Per epoch it
draws a deterministic order from ``(seed, epoch)`` (optionally mixing sources with weights), cuts it
into global batches of ``batch_size * num_replicas`` and splits each global batch over the ranks so
that their voxel loads balance (greedy, largest first, each rank gets exactly ``batch_size``). Every
rank computes the same global order, so no communication is needed, and resuming from
``(epoch, position)`` replays exactly the remaining batches.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

__all__ = ["BalancedBatchSampler", "balanced_split", "epoch_order"]


def balanced_split(loads: Sequence[int], parts: int, capacity: Optional[int] = None) -> List[List[int]]:
    """Positions ``0..len(loads)-1`` split into ``parts`` groups with balanced load sums.

    Greedy, largest first: each item goes to the lightest group that still has room (``capacity``
    items per group when given). Ties break by group index, so the result is deterministic.
    Positions inside a group keep their original order."""
    n = len(loads)
    if capacity is None:
        capacity = -(-n // parts)
    if capacity * parts < n:
        raise ValueError(f"{n} items do not fit {parts} groups of {capacity}")
    order = sorted(range(n), key=lambda i: (-int(loads[i]), i))
    sums, groups = [0] * parts, [[] for _ in range(parts)]
    for i in order:
        g = min((j for j in range(parts) if len(groups[j]) < capacity), key=lambda j: (sums[j], j))
        groups[g].append(i)
        sums[g] += int(loads[i])
    return [sorted(g) for g in groups]


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True, groups: Optional[Sequence[str]] = None,
                weights: Optional[Mapping[str, float]] = None, num_samples: Optional[int] = None) -> np.ndarray:
    """The dataset indices of one epoch.

    Without ``weights``: a permutation of ``range(n)`` (identity when not shuffling). With
    ``weights`` (group name -> relative weight, e.g. per source): ``num_samples`` draws (default n);
    each draw picks a group with probability proportional to its weight, then the next index of
    that group's own shuffled cycle (without replacement until the group is exhausted)."""
    rng = np.random.default_rng([seed, epoch])
    if not weights:
        return rng.permutation(n) if shuffle else np.arange(n)
    groups = list(groups or [""] * n)
    names = [g for g in sorted(weights) if weights[g] > 0]
    members = {g: np.array([i for i, x in enumerate(groups) if x == g], dtype=np.int64) for g in names}
    names = [g for g in names if len(members[g])]
    if not names:
        raise ValueError("no sample belongs to a group with positive weight")
    p = np.array([weights[g] for g in names], dtype=np.float64)
    p /= p.sum()
    m = n if num_samples is None else num_samples
    picks = rng.choice(len(names), size=m, p=p)
    cursors = {g: 0 for g in names}
    cycles = {g: rng.permutation(members[g]) if shuffle else members[g] for g in names}
    out = np.empty(m, dtype=np.int64)
    for k, gi in enumerate(picks):
        g = names[gi]
        if cursors[g] == len(cycles[g]):
            cycles[g] = rng.permutation(members[g]) if shuffle else members[g]
            cursors[g] = 0
        out[k] = cycles[g][cursors[g]]
        cursors[g] += 1
    return out


class BalancedBatchSampler:
    """Yields this rank's batches (lists of dataset indices), voxel-balanced across ranks."""

    def __init__(self, loads: Sequence[int], batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True, groups: Optional[Sequence[str]] = None,
                 weights: Optional[Mapping[str, float]] = None, num_samples: Optional[int] = None,
                 balance: bool = True):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.loads = np.asarray(loads, dtype=np.int64)
        self.batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank
        self.seed, self.shuffle, self.balance = seed, shuffle, balance
        self.groups, self.weights, self.num_samples = groups, dict(weights or {}), num_samples
        self.epoch, self.position = 0, 0  # position = global batches already consumed in this epoch
        if len(self) == 0:
            raise ValueError(f"{len(self.loads)} samples make no global batch of {batch_size} x {num_replicas}")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_replicas

    def __len__(self) -> int:
        n = self.num_samples or len(self.loads)
        return n // self.global_batch  # drop_last: every rank gets the same number of full batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if "seed" in state and state["seed"] != self.seed:
            raise ValueError(f"sampler seed {self.seed} != checkpoint seed {state['seed']}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def global_batches(self, epoch: Optional[int] = None) -> List[np.ndarray]:
        order = epoch_order(len(self.loads), self.seed, self.epoch if epoch is None else epoch, self.shuffle,
                            self.groups, self.weights or None, self.num_samples)
        gb = self.global_batch
        return [order[i * gb:(i + 1) * gb] for i in range(len(order) // gb)]

    def split(self, batch: np.ndarray) -> List[List[int]]:
        """One global batch -> the per-rank index lists."""
        if not self.balance or self.num_replicas == 1:
            b = self.batch_size
            return [batch[r * b:(r + 1) * b].tolist() for r in range(self.num_replicas)]
        parts = balanced_split(self.loads[batch], self.num_replicas, self.batch_size)
        return [[int(batch[i]) for i in p] for p in parts]

    def __iter__(self) -> Iterator[List[int]]:
        batches = self.global_batches()
        start = self.position
        for k in range(start, len(batches)):
            self.position = k + 1
            yield self.split(batches[k])[self.rank]
        # an exhausted epoch moves on (a later __iter__ without set_epoch starts the next one)
        self.epoch, self.position = self.epoch + 1, 0

"""Loss-aware importance sampling of timesteps (Nichol & Dhariwal 2021, Sec. 3.3).

Keeps the last ``history`` values of each per-level loss term; draws level t
with ``p_t`` proportional to ``sqrt(E[L_t^2])`` (mixed with ``uniform_prob`` of
the uniform distribution so that no level starves, as the reference code
does) and weights each draw by ``1 / (T p_t)`` so that the weighted loss is an
unbiased estimate of the uniform-t loss. Uniform until every level holds
``history`` values. Pure functions of an explicit state, usable under jit.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class ImportanceState(NamedTuple):
    history: Array  # [T, H] the last H loss values per level, oldest first
    counts: Array  # [T] int32, number of values held (<= H)


@dataclasses.dataclass(frozen=True)
class LossAwareSampler:
    num_timesteps: int
    history: int = 10
    uniform_prob: float = 0.001

    def init(self) -> ImportanceState:
        return ImportanceState(
            jnp.zeros((self.num_timesteps, self.history), jnp.float32),
            jnp.zeros((self.num_timesteps,), jnp.int32),
        )

    def probabilities(self, state: ImportanceState) -> Array:
        """[T] sampling probabilities of levels 1..T."""
        T = self.num_timesteps
        w = jnp.sqrt(jnp.mean(state.history**2, axis=-1))
        w = w / jnp.maximum(jnp.sum(w), 1e-30)
        w = w * (1.0 - self.uniform_prob) + self.uniform_prob / T
        warm = jnp.all(state.counts == self.history)
        return jnp.where(warm, w / jnp.sum(w), jnp.full((T,), 1.0 / T))

    def sample(self, state: ImportanceState, key: Array, batch_size: int) -> tuple[Array, Array]:
        """Draws levels (int32 in 1..T) and their weights ``1 / (T p_t)``."""
        p = self.probabilities(state)
        idx = jax.random.choice(key, self.num_timesteps, (batch_size,), p=p)
        return idx + 1, 1.0 / (self.num_timesteps * p[idx])

    def update(self, state: ImportanceState, levels: Array, losses: Array) -> ImportanceState:
        """Appends each (level, loss) pair in order, dropping the oldest value when full."""

        def add(state, item):
            level, loss = item
            i = level - 1
            row, count = state.history[i], state.counts[i]
            full = count == self.history
            rolled = jnp.roll(row, -1).at[-1].set(loss)
            filled = row.at[jnp.minimum(count, self.history - 1)].set(loss)
            row = jnp.where(full, rolled, filled)
            return ImportanceState(
                state.history.at[i].set(row), state.counts.at[i].set(jnp.minimum(count + 1, self.history))
            ), None

        state, _ = jax.lax.scan(add, state, (levels.astype(jnp.int32), losses.astype(jnp.float32)))
        return state

"""Applying a Flax network to parameters whose shapes were checked once, as a whole, against the network's.

Flax checks an existing parameter each time a module reads it under a trace: ``Scope.param`` re-derives its
shape with ``jax.eval_shape`` of the parameter's initializer (flax/core/scope.py, google/flax#530). That is a
small trace per parameter on every trace of the network: tracing the forward pass of the digits default took
0.210 s with it and 0.105 s without, CIFAR-10's 0.600 s and 0.274 s, ImageNet 64's 0.858 s and 0.468 s
(``python bench/trace_time.py``: docs/trace_time.json, docs/benchmarks.md). Every program that holds the network
pays it, persistent-cache hit or not: each train step, sampler, loss and evaluation.

:func:`apply` compares the whole tree of parameters (paths and shapes) with the network's traced ones once per
call instead, which is a stricter check (a missing or extra parameter is named too), and reads the parameters
without Flax's re-check while the network runs. Outside :func:`apply` Flax behaves as it always does. The
shortcut is taken only for the Flax versions in :data:`TESTED`; with another one Flax's own check runs as well
and nothing else changes.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import numpy as np
from flax.core import meta, scope

TESTED = ("0.12.",)  # Flax versions whose Scope.param this module's shortcut was checked against
_CHECKED = contextvars.ContextVar("pdist_params_checked", default=False)
_flax_param = scope.Scope.param


def _param(self, name, init_fn, *init_args, unbox=True, **init_kwargs):
    if _CHECKED.get() and self.has_variable("params", name):  # Scope.param's own path, less the re-derived shape
        self.reserve(name, "params")
        value = self.get_variable("params", name)
        return meta.unbox(value) if unbox else value
    return _flax_param(self, name, init_fn, *init_args, unbox=unbox, **init_kwargs)


def _installed() -> bool:
    import flax

    if not flax.__version__.startswith(TESTED):
        return False
    if scope.Scope.param is not _param:
        scope.Scope.param = _param
    return True


_SHORTCUT = _installed()


def _leaves(tree) -> dict[str, tuple]:
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        keys = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
        out["/".join(map(str, keys))] = tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)
    return out


def shape_difference(tree, expected) -> tuple[str, tuple | None, tuple | None] | None:
    """The first leaf where ``tree`` and ``expected`` (trees of arrays or shape-dtype structs) differ, as
    ``(path, its shape in tree or None, its shape in expected or None)`` with the path's keys joined by "/"
    (``expected``'s leaves in order, then the leaves only ``tree`` has); None where they agree."""
    got, want = _leaves(tree), _leaves(expected)
    for path, shape in want.items():
        if got.get(path) != shape:
            return path, got.get(path), shape
    extra = next((path for path in got if path not in want), None)
    return None if extra is None else (extra, got[extra], None)


def check_shapes(params, expected, what: str = "the network") -> None:
    """Raises ValueError naming the first parameter whose path or shape differs between ``params`` and
    ``expected`` (:func:`shape_difference`)."""
    differ = shape_difference(params, expected)
    if differ is None:
        return
    path, got, want = differ
    if got is None:
        raise ValueError(f"The parameters lack {path} (shape {want}) that {what} has.")
    if want is None:
        raise ValueError(f"The parameters hold {path} (shape {got}), which {what} does not have.")
    raise ValueError(f"Parameter {path} has shape {got}; {what} expects {want}.")


@contextlib.contextmanager
def _checked():
    token = _CHECKED.set(_SHORTCUT)
    try:
        yield
    finally:
        _CHECKED.reset(token)


def apply(network, params, expected, *args, **kwargs):
    """``network.apply({"params": params}, *args, **kwargs)`` after checking ``params`` against ``expected``
    (the network's parameter shapes, e.g. :meth:`pdist.spec.ModelSpec.param_shapes`) once as a whole."""
    check_shapes(params, expected)
    with _checked():
        return network.apply({"params": params}, *args, **kwargs)

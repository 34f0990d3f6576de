"""XLA's CPU settings pdist runs with unless ``XLA_FLAGS`` says otherwise, set when pdist is imported (before JAX
starts its backend; a backend that is already running keeps its settings).

``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``: each convolution through XLA's own (Eigen)
kernel instead of a YNNPACK call of its own. On this project's 2-core CPU, against PyTorch on the same 6.9M-parameter
UNet (bench/vs_pytorch_cpu.py: docs/vs_pytorch_cpu_before.json, docs/vs_pytorch_cpu.json), pdist's share of
PyTorch's speed rose from 0.43-0.66 to 0.56-1.00 for the forward pass and from 0.45-0.63 to 0.65-0.83 for the
train step; the digits network is unchanged within noise. Outputs change by float rounding (the parity tests
against the peers' fixtures pass), not
bit for bit: ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`` gives back XLA's own
default (any ``ynn_fusion_type`` in ``XLA_FLAGS`` leaves the choice to it). XLA stops on a flag it does not know,
so the flag is set only for the jaxlib versions in :data:`TESTED`.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# ``jax.jit(..., compiler_options=OPTIMIZED)``: LLVM's optimizations (XLA's default level) for one program whatever
# ``XLA_FLAGS`` says, for a program that runs many times over (a training loop such as the digits evaluator's; the
# test suite, which compiles everything else at -O0, passes it to its own long-running programs too).
OPTIMIZED = {"xla_backend_optimization_level": 2}

TESTED = ("0.10.",)  # jaxlib versions that have the flag and were measured with it
FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def flags() -> str:
    """The flags pdist adds for the installed jaxlib ("" for an untested one)."""
    try:
        from importlib.metadata import version

        installed = version("jaxlib")
    except Exception:  # no jaxlib metadata (an unusual install): add nothing
        return ""
    return FLAG if installed.startswith(TESTED) else ""


def apply(environ: MutableMapping[str, str] = os.environ) -> None:
    """Adds :func:`flags` to ``environ["XLA_FLAGS"]`` unless it already chooses the YNNPACK fusions."""
    current, ours = environ.get("XLA_FLAGS", ""), flags()
    if ours and "ynn_fusion_type" not in current:
        environ["XLA_FLAGS"] = f"{current} {ours}".strip()

"""pdist: diffusion models in JAX, from Improved-DDPM training to progressive distillation and fast samplers.

The pure math core: ``pdist.schedules``, ``pdist.diffusion``, ``pdist.losses``,
``pdist.vlb``, ``pdist.importance``, ``pdist.samplers``; exact test oracles in
``pdist.oracles``. Training: ``python -m pdist.main``; a trained checkpoint:
``pdist.load(path)`` (imported on first use, so the math core stays light).
"""

from pdist import cpu_defaults

__version__ = "0.1.0"
cpu_defaults.apply()  # XLA's CPU settings, before JAX starts its backend (pdist/cpu_defaults.py)


def __getattr__(name):
    if name == "load":
        from pdist.pretrained import load

        return load
    raise AttributeError(f"module 'pdist' has no attribute {name!r}")

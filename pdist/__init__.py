"""pdist: diffusion models in JAX, from Improved-DDPM training to progressive distillation and fast samplers.

The pure math core: ``pdist.schedules``, ``pdist.diffusion``, ``pdist.losses``,
``pdist.vlb``, ``pdist.importance``, ``pdist.samplers``; exact test oracles in
``pdist.oracles``.
"""

__version__ = "0.1.0"

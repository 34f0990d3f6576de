"""pdist: diffusion training, progressive distillation and fast samplers in JAX."""

from setuptools import find_packages, setup

setup(
    name="pdist",
    version="0.1.0",
    description="Diffusion models in JAX/Flax: Improved-DDPM training, progressive distillation, fast samplers.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["pdist", "pdist.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10",
        "numpy>=1.26",
        "scipy>=1.11",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8", "optax>=0.2", "ruff>=0.6"],
    },
)

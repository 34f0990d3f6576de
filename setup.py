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
        "pillow>=10",
        "flax>=0.12",
        "optax>=0.2",
        "orbax-checkpoint>=0.11",
        "tensorflow-cpu>=2.20",
        "tensorflow-datasets>=4.9.7",
        "importlib_resources",  # tensorflow-datasets imports it without declaring it
        "ml-collections>=1.0",
        "clu>=0.0.12",
        "tensorboard>=2.20",  # clu's metric writers need it
        "scikit-learn>=1.4",  # the embedded digits dataset
        "absl-py",
        "msgpack>=1.0",  # the official Progressive Distillation checkpoints (pdist.interop.pd_release)
        "ml_dtypes>=0.5",  # bfloat16 storages of PyTorch files (pdist.interop.torch_file); jax requires it too
        "safetensors>=0.4",  # diffusers' weight files, read with its numpy API (pdist.interop.diffusers)
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",  # the suite runs on every core
            "hypothesis>=6.100",
            "chex>=0.1.86",
            "ruff>=0.6",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6",
            "gcsfs>=2024.2",  # tests/test_cloud.py: epath's client for gs:// against a local server
            "gcp-storage-emulator>=2024.8",  # that server (tests/gcs_server.py)
        ],
    },
)

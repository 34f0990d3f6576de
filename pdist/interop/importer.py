"""A foreign checkpoint (:data:`pdist.interop.FORMATS`) turned into an ordinary pdist workdir.

``import_checkpoint(source, workdir, source_config=..., source_flags=..., overrides=...)`` detects the
format, builds the pdist config that describes the network and diffusion exactly, maps the weights onto
pdist's network, checks every tensor's shape against what that config builds (naming the first that
differs), and writes one Orbax checkpoint at the source's step whose metadata records the source (format,
path, SHA-256 of the file, step). Every refusal is one sentence before anything is written. The optimizer
state starts fresh (the source's is not mapped): continued training restarts Adam's moments.
"""

from __future__ import annotations

import hashlib
import json

import jax
import numpy as np

from pdist import build
from pdist import config as config_lib
from pdist.errors import InputError
from pdist.interop import FORMATS
from pdist.models.checked_apply import shape_difference
from pdist.runtime import checkpoint, files, layout
from pdist.runtime import step as step_lib
from pdist.spec import ModelSpec


def detect(data: bytes) -> str:
    """The name of the format of a file whose bytes are ``data``; InputError when none knows it."""
    for name, fmt in FORMATS.items():
        if hasattr(fmt, "detect") and fmt.detect(data[:4096]):
            return name
    raise InputError(
        f"The file is of no format pdist imports (known: {', '.join(sorted(FORMATS))}); give a checkpoint "
        "file those projects wrote."
    )


def check_shapes(mapped, expected) -> None:
    """``mapped`` (the source's tensors in pdist's names) against ``expected`` (the shapes pdist builds)."""
    differ = shape_difference(mapped, expected)
    if differ is None:
        return
    path, got, want = differ
    if got is None:
        raise InputError(f"The checkpoint has no tensor for {path}; the config does not describe these weights.")
    if want is None:
        raise InputError(
            f"The checkpoint's tensor {path} has no place in the config's network; the config or flags do not "
            "describe these weights."
        )
    raise InputError(
        f"The checkpoint's tensor for {path} has shape {got} but the config's network needs {want}; the config or "
        "flags do not describe these weights."
    )


def _set(config, dotted: str, text: str) -> None:
    """``--config.KEY=VALUE`` as pdist's command line reads it (a Python literal, else the string)."""
    import ast

    from pdist.errors import ConfigError

    config_lib.check_key(config, dotted)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    try:
        config_lib.set_value(config, dotted, value)
    except TypeError as e:
        raise ConfigError(f"--config.{dotted}={text!r} has the wrong type for that key ({e}).") from None


def prepare(source: str, source_config=None, source_flags=None, overrides=()):
    """(config, spec, params, EMA params, step, metadata) of ``source``, checked; nothing written."""
    if not files.exists(source):
        raise InputError(f"There is no file at {source}; give the path of a downloaded checkpoint.")
    if files.isdir(source):
        folders = [n for n, f in FORMATS.items() if hasattr(f, "detect_folder") and f.detect_folder(source)]
        if not folders:
            raise InputError(
                f"{source} is a folder of no format pdist imports (a diffusers pipeline or UNet folder holds "
                "config.json files); give a checkpoint file or such a folder."
            )
        name = folders[0]
        config, params, ema, step, extra = FORMATS[name].load_folder(source, source_config, source_flags)
        digest = extra.pop("sha256")
    else:
        data = files.read_bytes(source)
        name = detect(data)
        config, params, ema, step, extra = FORMATS[name].load(data, source_config, source_flags)
        digest = hashlib.sha256(data).hexdigest()
    for key, value in overrides:
        _set(config, key, value)
    from pdist.jobs import sections  # train's checks, without importing the training job (TensorFlow)

    config.mode = "train"
    sections.validate(config)
    sections.validate_training(config)
    spec = ModelSpec.of(config)
    expected = spec.param_shapes()
    check_shapes(ema, expected)
    check_shapes(params, expected)
    described = extra.pop("source", {})  # what the format adds about the source (OpenAI's code and flags)
    metadata = {
        **extra,
        "source": {
            **described, "format": name, "path": source, "sha256": digest, "step": step,
        },
    }  # fmt: skip
    return config, spec, params, ema, step, metadata


def import_checkpoint(source: str, workdir: str, source_config=None, source_flags=None, overrides=()) -> str:
    """Writes ``workdir`` (which must hold no checkpoint) from ``source``; returns its checkpoints folder."""
    config, spec, params, ema, step, metadata = prepare(source, source_config, source_flags, overrides)
    layout.check_writable(workdir)
    directory = layout.checkpoints(files.absolute(workdir))
    if files.exists(directory) and checkpoint.Checkpointer(directory, asynchronous=False).latest_step() is not None:
        raise InputError(f"{workdir} already holds checkpoints; import into a new workdir.")
    _, optimizer = build.state_init(config, spec)
    to32 = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float32), tree)  # noqa: E731
    # the optimizer's and the timestep sampler's initial state around the imported parameters (no random init)
    fresh = jax.jit(lambda p: step_lib.init_state(p, optimizer.tx, build.importance_sampler(config)))(to32(params))
    state = fresh.replace(ema_params=to32(ema), step=np.int32(step))
    checkpoint.save_once(directory, step, state, {"config": json.loads(config.to_json()), "step": step, **metadata})
    return directory

"""The UNet of the Improved-DDPM / ADM family (Nichol & Dhariwal 2021; Dhariwal & Nichol 2021).

``UNet(...)(x_BHWC, logsnr_B, label_B=None, guidance_B=None, train=False, attention_from=None) -> out_BHWK``:

* residual blocks with GroupNorm, SiLU and scale-shift conditioning on the
  embedding (``h = norm(h) * (1 + scale) + shift``), dropout before the last
  conv, which starts at zero so that each block starts as the identity;
* multi-head self-attention at the resolutions in ``attn_resolutions``
  (``head_dim`` channels per head, or a fixed ``num_heads``); ``attention_from`` [B] (row indices) makes
  row i attend with row ``attention_from[i]``'s queries and keys and its own values, in every attention
  block (the self-attention control of :mod:`pdist.editing`; the parameters are the same);
* down/upsampling by strided/nearest convs, or by BigGAN-style residual blocks
  (``resblock_updown``);
* the noise level enters as a sinusoidal embedding of
  ``c = atan(exp(-logsnr / 2)) * 2 / pi`` in [0, 1] (1000 c, as a time step),
  which serves every schedule, discrete or continuous; a class embedding is
  added to it when ``num_classes > 0``, with one more row for the null class
  of classifier-free guidance (label ``num_classes``, :mod:`pdist.guidance`);
* ``guidance_input``: the guidance weight w enters like the noise level, as
  sinusoidal features (of ``250 w``: w = 4 spans the noise level's 1000)
  through two dense layers added to the embedding (Meng et al. 2023, guided
  distillation); the last layer starts at zero, so a network given a
  teacher's parameters and fresh w layers is exactly the teacher at every w;
* ``dtype`` is the compute dtype (``bfloat16`` for mixed precision): parameters
  stay float32, GroupNorm statistics and the attention softmax run in float32,
  the output is float32;
* ``remat`` recomputes each residual and attention block's activations in the
  backward pass instead of storing them (less memory, about a third more
  compute); parameter names and values are the same either way;
* ``out_channels`` covers learned variance and two heads (see
  :func:`pdist.diffusion.output_channels`); the output conv starts at zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from pdist.errors import ConfigError, check_one_of, check_positive

Array = jax.Array


def noise_level_embedding(logsnr: Array, dim: int, max_period: float = 10_000.0, **order) -> Array:
    """[B] logSNR -> [B, dim] sinusoidal features of ``1000 * atan(exp(-logsnr/2)) * 2/pi``
    (:func:`timestep_embedding`'s, with its ``sin_first`` and ``freq_shift``)."""
    c = jnp.arctan(jnp.exp(-0.5 * logsnr.astype(jnp.float32))) / (0.5 * math.pi)
    return timestep_embedding(1000.0 * c, dim, max_period, **order)


# config.model.logsnr_input: how the network embeds its noise input. "timestep" and "rescaled_timestep" are
# OpenAI's (improved-/guided-diffusion): the network is given the discrete schedule's index (level i is index
# i - 1; rescaled: times 1000 / T) instead of the logSNR (:meth:`pdist.spec.ModelSpec.apply`), embedded by
# :func:`timestep_embedding`.
LOGSNR_INPUTS = ("pdist", "inv_cos", "sigmoid", "linear", "timestep", "rescaled_timestep")
TIMESTEP_INPUTS = ("timestep", "rescaled_timestep")
# config.model.downsample_padding of the strided 3x3 convolution: "same" (Flax's: none before, one after on an
# even size) or "symmetric" (one on each side, as PyTorch's padding=1 in OpenAI's and diffusers' networks)
DOWNSAMPLE_PADDINGS = ("same", "symmetric")


def release_embedding(logsnr: Array, dim: int, kind: str, scale_range: tuple[float, float] = (-10.0, 10.0)) -> Array:
    """[B] logSNR -> [B, dim] features as the official Progressive Distillation release embeds the noise level
    (its ``logsnr_input_type``): ``inv_cos`` (``atan(exp(-logsnr/2)) * 2/pi`` of the logSNR clipped to
    [-20, 20]), ``sigmoid`` or ``linear`` (over ``scale_range``), times 1000, in sinusoids whose frequencies
    step over ``dim/2 - 1`` (not ``dim/2``), sines first: :func:`timestep_embedding`'s ``sin_first`` and
    ``freq_shift=1``, with the release's own order of float32 operations (its figures to 1e-5 depend on it)."""
    logsnr = logsnr.astype(jnp.float32)
    if kind == "inv_cos":
        u = jnp.arctan(jnp.exp(-0.5 * jnp.clip(logsnr, -20.0, 20.0))) / (0.5 * math.pi)
    elif kind == "sigmoid":
        u = jax.nn.sigmoid(logsnr)
    elif kind == "linear":
        u = (logsnr - scale_range[0]) / (scale_range[1] - scale_range[0])
    else:
        raise ValueError(f"Unknown logsnr_input {kind!r}; choose one of {LOGSNR_INPUTS}.")
    half = dim // 2
    freqs = jnp.exp(-math.log(10_000.0) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
    args = 1000.0 * u[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def timestep_embedding(
    timestep: Array, dim: int, max_period: float = 10_000.0, sin_first: bool = False, freq_shift: float = 0.0
) -> Array:
    """[B] (fractional) time steps -> [B, dim] sinusoidal features at frequencies
    ``max_period ** (-k / (dim/2 - freq_shift))``, cosines first (OpenAI's and pdist's) or sines first
    (``sin_first``; with ``freq_shift=1``, Ho et al.'s DDPM and diffusers' models of it)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
    args = timestep.astype(jnp.float32)[:, None] * freqs[None, :]
    parts = [jnp.sin(args), jnp.cos(args)] if sin_first else [jnp.cos(args), jnp.sin(args)]
    return jnp.concatenate(parts, axis=-1)


def guidance_embedding(w: Array, dim: int) -> Array:
    """[B] guidance weights -> [B, dim] sinusoidal features of ``250 w`` (the noise level's, on w's scale)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = 250.0 * w.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _groups(channels: int, max_groups: int = 32) -> int:
    return math.gcd(channels, max_groups)


def _norm(channels: int, dtype, eps: float = 1e-6) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=_groups(channels), epsilon=eps, dtype=dtype)


def _downsample(h: Array) -> Array:
    return nn.avg_pool(h, (2, 2), strides=(2, 2))


def _upsample(h: Array) -> Array:
    b, height, width, c = h.shape
    return jax.image.resize(h, (b, 2 * height, 2 * width, c), method="nearest")


class ResBlock(nn.Module):
    out_ch: int
    dropout: float
    resample: str | None = None  # None, "down" or "up"
    dtype: Any = jnp.float32
    scale_shift: bool = True  # False: the embedding is added before the second norm (OpenAI's use_scale_shift_norm)
    norm_eps: float = 1e-6

    @nn.compact
    def __call__(self, x: Array, emb: Array, train: bool) -> Array:
        h = nn.silu(_norm(x.shape[-1], self.dtype, self.norm_eps)(x))
        if self.resample is not None:
            op = _downsample if self.resample == "down" else _upsample
            h, x = op(h), op(x)
        h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype)(h)
        width = 2 * self.out_ch if self.scale_shift else self.out_ch
        e = nn.Dense(width, dtype=self.dtype)(nn.silu(emb))[:, None, None, :]
        if self.scale_shift:
            scale, shift = jnp.split(e, 2, -1)
            h = _norm(self.out_ch, self.dtype, self.norm_eps)(h) * (1 + scale) + shift
        else:
            h = _norm(self.out_ch, self.dtype, self.norm_eps)(h + e)
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1), dtype=self.dtype)(x)
        return x + h


def attention_from_rows(
    query, key, value, mask=None, dtype=None, precision=None, force_fp32_for_softmax=False, *, rows: Array
):
    """Dot-product attention in which row i of the batch attends with the queries and keys of row ``rows[i]``
    and its own values (InfEdit's self-attention control, :mod:`pdist.editing`)."""
    return nn.dot_product_attention(
        query[rows],
        key[rows],
        value,
        mask=mask,
        dtype=dtype,
        precision=precision,
        force_fp32_for_softmax=force_fp32_for_softmax,
    )


class AttnBlock(nn.Module):
    num_heads: int
    dtype: Any = jnp.float32
    norm_eps: float = 1e-6
    norm: bool = True  # False: attention on the unnormalized input (diffusers' scale-shift middle block)

    @nn.compact
    def __call__(self, x: Array, attention_from: Array | None = None) -> Array:
        b, height, width, c = x.shape
        h = _norm(c, self.dtype, self.norm_eps)(x) if self.norm else x
        h = h.reshape(b, height * width, c)
        control = {} if attention_from is None else {"attention_fn": partial(attention_from_rows, rows=attention_from)}
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            out_kernel_init=nn.initializers.zeros,
            force_fp32_for_softmax=True,
            name="MultiHeadDotProductAttention_0",
            **control,
        )(h)
        return x + h.reshape(b, height, width, c)


class UNet(nn.Module):
    out_channels: int
    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    emb_ch: int | None = None  # the embedding's width; None: 4 ch
    logsnr_input: str = "pdist"  # how the noise level is embedded: LOGSNR_INPUTS
    scale_shift: bool = True  # the residual blocks' conditioning: scale-shift of the norm, or added (False)
    norm_eps: float = 1e-6  # GroupNorm's epsilon (Flax's; PyTorch's is 1e-5)
    downsample_padding: str = "same"  # DOWNSAMPLE_PADDINGS
    sin_first: bool = False  # the time step's sinusoids: sines first (else cosines)
    mid_attention_norm: bool = True  # False: the middle attention block has no GroupNorm (diffusers' scale-shift)
    freq_shift: float = 0.0  # their frequencies step over ch / 2 - freq_shift
    attn_resolutions: Sequence[int] = (16,)
    head_dim: int | None = 64
    num_heads: int | None = None
    dropout: float = 0.0
    resblock_updown: bool = False
    num_classes: int = 0
    guidance_input: bool = False
    dtype: Any = jnp.float32
    remat: bool = False

    def _heads(self, channels: int) -> int:
        if self.num_heads is not None:
            return self.num_heads
        return max(1, channels // self.head_dim)

    @nn.compact
    def __call__(
        self,
        x: Array,
        logsnr: Array,
        label: Array | None = None,
        guidance: Array | None = None,
        train: bool = False,
        attention_from: Array | None = None,
    ) -> Array:
        emb_dim = 4 * self.ch if self.emb_ch is None else self.emb_ch
        order = {"sin_first": self.sin_first, "freq_shift": self.freq_shift}
        if self.logsnr_input == "pdist":
            emb = noise_level_embedding(logsnr, self.ch, **order)
        elif self.logsnr_input in TIMESTEP_INPUTS:  # logsnr holds the time step (ModelSpec.apply)
            emb = timestep_embedding(logsnr, self.ch, **order)
        else:
            emb = release_embedding(logsnr, self.ch, self.logsnr_input)
        emb = nn.Dense(emb_dim, dtype=self.dtype)(emb)
        emb = nn.Dense(emb_dim, dtype=self.dtype)(nn.silu(emb))
        if self.num_classes > 0:
            if label is None:
                raise ValueError("This UNet is class-conditional (num_classes > 0); pass label=[B] ints.")
            emb = emb + nn.Embed(self.num_classes + 1, emb_dim, dtype=self.dtype)(label)  # + the null class
        if self.guidance_input:
            if guidance is None:
                raise ValueError("This UNet takes the guidance weight (guidance_input); pass guidance=[B] floats.")
            g = nn.Dense(emb_dim, dtype=self.dtype, name="guidance_dense_0")(guidance_embedding(guidance, self.ch))
            zeros = nn.initializers.zeros
            g = nn.Dense(emb_dim, kernel_init=zeros, bias_init=zeros, dtype=self.dtype, name="guidance_dense_1")(
                nn.silu(g)
            )
            emb = emb + g

        res_block = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock  # train is static
        attn_block = nn.remat(AttnBlock) if self.remat else AttnBlock
        counts = {"res": 0, "attn": 0}

        def res(h, out_ch, resample=None):
            name = f"ResBlock_{counts['res']}"  # the same names with and without remat
            counts["res"] += 1
            block = res_block(out_ch, self.dropout, resample, self.dtype, self.scale_shift, self.norm_eps, name=name)
            return block(h, emb, train)

        def attn(h, norm=True):
            name = f"AttnBlock_{counts['attn']}"
            counts["attn"] += 1
            block = attn_block(self._heads(h.shape[-1]), self.dtype, self.norm_eps, norm, name=name)
            return block(h, attention_from)

        h = nn.Conv(self.ch, (3, 3), dtype=self.dtype)(x.astype(self.dtype))
        skips = [h]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = res(h, self.ch * mult)
                if h.shape[1] in self.attn_resolutions:
                    h = attn(h)
                skips.append(h)
            if level != len(self.ch_mult) - 1:
                if self.resblock_updown:
                    h = res(h, h.shape[-1], "down")
                else:
                    pad = "SAME" if self.downsample_padding == "same" else ((1, 1), (1, 1))
                    h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), padding=pad, dtype=self.dtype)(h)
                skips.append(h)

        h = res(h, h.shape[-1])
        h = attn(h, self.mid_attention_norm)
        h = res(h, h.shape[-1])

        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = res(jnp.concatenate([h, skips.pop()], axis=-1), self.ch * mult)
                if h.shape[1] in self.attn_resolutions:
                    h = attn(h)
            if level != 0:
                if self.resblock_updown:
                    h = res(h, h.shape[-1], "up")
                else:
                    h = nn.Conv(h.shape[-1], (3, 3), dtype=self.dtype)(_upsample(h))
        assert not skips

        h = nn.silu(_norm(h.shape[-1], self.dtype, self.norm_eps)(h))
        h = nn.Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
        return h.astype(jnp.float32)


def from_config(config: ml_collections.ConfigDict, out_channels: int) -> UNet:
    """The UNet that ``config.model`` describes, with ``out_channels`` outputs (classes from ``config.data``)."""
    model = config.model
    return UNet(
        out_channels=out_channels,
        ch=model.ch,
        ch_mult=tuple(model.ch_mult),
        num_res_blocks=model.num_res_blocks,
        emb_ch=model.emb_ch,
        logsnr_input=model.logsnr_input,
        scale_shift=model.scale_shift,
        norm_eps=float(model.norm_eps),
        downsample_padding=model.downsample_padding,
        sin_first=bool(model.sin_first),
        mid_attention_norm=bool(model.mid_attention_norm),
        freq_shift=float(model.freq_shift),
        attn_resolutions=tuple(model.attn_resolutions),
        head_dim=model.head_dim,
        num_heads=model.num_heads,
        dropout=model.dropout,
        resblock_updown=model.resblock_updown,
        num_classes=config.data.num_classes if model.class_conditional else 0,
        guidance_input=model.guidance_input,
        dtype=jnp.dtype(model.dtype),
        remat=model.remat,
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """The UNet's settings in ``config.model``, one sentence on the first bad one."""
    model = config.model
    check_positive(model.ch, "model.ch")
    for name in ("ch_mult", "attn_resolutions"):
        value = model[name]
        if not (isinstance(value, (tuple, list)) and all(isinstance(v, int) and v > 0 for v in value)):
            raise ConfigError(f"config.model.{name}={value!r} must be a tuple of positive integers, e.g. (1, 2, 2).")
    if not model.ch_mult:
        raise ConfigError("config.model.ch_mult is empty; give one channel multiplier per resolution, e.g. (1, 2).")
    check_positive(model.num_res_blocks, "model.num_res_blocks")
    if model.emb_ch is not None:
        check_positive(model.emb_ch, "model.emb_ch")
    check_one_of(model.logsnr_input, LOGSNR_INPUTS, "model.logsnr_input")
    if model.logsnr_input in TIMESTEP_INPUTS and not config.diffusion.num_timesteps:
        raise ConfigError(
            f"config.model.logsnr_input={model.logsnr_input!r} gives the network a discrete schedule's time step; "
            "use it with a discrete schedule (config.diffusion.num_timesteps)."
        )
    check_one_of(model.downsample_padding, DOWNSAMPLE_PADDINGS, "model.downsample_padding")
    if not (isinstance(model.freq_shift, (int, float)) and 0 <= model.freq_shift < model.ch // 2):
        raise ConfigError(
            f"config.model.freq_shift={model.freq_shift!r} must be a number in [0, ch / 2) (diffusers' freq_shift)."
        )
    if not (isinstance(model.norm_eps, (int, float)) and model.norm_eps > 0):
        raise ConfigError(f"config.model.norm_eps={model.norm_eps!r} must be a positive number (GroupNorm's epsilon).")
    size = config.data.image_size
    if size % 2 ** (len(model.ch_mult) - 1):
        raise ConfigError(f"config.data.image_size={size} must be divisible by 2**(len(config.model.ch_mult) - 1).")
    if model.num_heads is None and (model.head_dim is None or model.head_dim <= 0):
        raise ConfigError("Set config.model.head_dim (channels per attention head) or config.model.num_heads.")

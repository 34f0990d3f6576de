"""The same train step in PyTorch, for a side-by-side with bench/train_step.py on a GPU.

python bench/torch_unet.py [--setup=cifar10] [--batch-size=128] [--steps=20] [--compile] [--dtype=bfloat16]

A PyTorch mirror of pdist's UNet (pdist/models/unet.py: same blocks, widths,
attention, BigGAN up/down blocks and noise-level embedding, so the same
parameter count) doing the step of configs/cifar10.py: x-parameterization,
truncated-SNR weight on the clipped logSNR cosine in continuous time, dropout,
Adam with global-norm clipping, and an EMA update. float32 with TF32 matmuls
and convolutions allowed (what XLA does on the GPU by default), or with
``--dtype=bfloat16`` the forward pass under ``torch.autocast`` to bfloat16
(PyTorch's mixed precision, the counterpart of pdist's ``model.dtype``:
parameters, gradients and Adam's state stay float32, normalizations and the
softmax run in float32, the loss is taken in float32). PyTorch is not a
pdist dependency: this runs where it is installed. Prints one markdown row.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pdist.config import from_file  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")


def norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(c, 32), c, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, in_ch, out_ch, emb_dim, dropout, resample=None):
        super().__init__()
        self.norm1, self.conv1 = norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2, self.drop = norm(out_ch), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.resample = resample

    def forward(self, x, emb):
        h = F.silu(self.norm1(x))
        if self.resample == "down":
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        elif self.resample == "up":
            h, x = (F.interpolate(a, scale_factor=2.0, mode="nearest") for a in (h, x))
        h = self.conv1(h)
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.drop(F.silu(h)))


class AttnBlock(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.norm, self.attn = norm(c), nn.MultiheadAttention(c, heads, batch_first=True)
        nn.init.zeros_(self.attn.out_proj.weight)

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)
        h = self.attn(h, h, h, need_weights=False)[0]
        return x + h.transpose(1, 2).reshape(b, c, hh, ww)


class UNet(nn.Module):
    def __init__(self, in_ch, out_ch, ch, ch_mult, num_res_blocks, attn_resolutions, head_dim, dropout, size):
        super().__init__()
        self.ch, emb_dim = ch, 4 * ch
        self.emb = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.down, chans, c, res = nn.ModuleList(), [ch], ch, size
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                blocks = [ResBlock(c, ch * mult, emb_dim, dropout)]
                c = ch * mult
                if res in attn_resolutions:
                    blocks.append(AttnBlock(c, max(1, c // head_dim)))
                self.down.append(nn.ModuleList(blocks))
                chans.append(c)
            if level != len(ch_mult) - 1:
                self.down.append(nn.ModuleList([ResBlock(c, c, emb_dim, dropout, "down")]))
                chans.append(c)
                res //= 2
        self.mid = nn.ModuleList(
            [ResBlock(c, c, emb_dim, dropout), AttnBlock(c, max(1, c // head_dim)), ResBlock(c, c, emb_dim, dropout)]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                blocks = [ResBlock(c + chans.pop(), ch * mult, emb_dim, dropout)]
                c = ch * mult
                if res in attn_resolutions:
                    blocks.append(AttnBlock(c, max(1, c // head_dim)))
                self.up.append(nn.ModuleList(blocks))
            if level != 0:
                self.up.append(nn.ModuleList([ResBlock(c, c, emb_dim, dropout, "up")]))
                res *= 2
        self.norm_out, self.conv_out = norm(c), nn.Conv2d(c, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def embedding(self, logsnr):
        c = torch.atan(torch.exp(-0.5 * logsnr)) / (0.5 * math.pi)
        half = self.ch // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=logsnr.device) / half)
        args = 1000.0 * c[:, None] * freqs[None]
        return self.emb(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))

    def _run(self, blocks, h, emb):
        for block in blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return h

    def forward(self, x, logsnr):
        emb = self.embedding(logsnr)
        h = self.conv_in(x)
        skips = [h]
        for blocks in self.down:
            h = self._run(blocks, h, emb)
            skips.append(h)
        h = self._run(self.mid, h, emb)
        for blocks in self.up:
            if blocks[0].resample != "up":
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(blocks, h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def cosine_logsnr(t, logsnr_min=-20.0, logsnr_max=20.0):
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    return -2.0 * torch.log(torch.tan(a * t + b))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", default="cifar10")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    config = from_file(os.path.join(CONFIGS, f"{args.setup}.py"))
    m, d = config.model, config.data
    if not m.resblock_updown or m.class_conditional or config.diffusion.parameterization != "x":
        sys.exit("bench/torch_unet.py mirrors x-parameterized, unconditional configs with resblock_updown=True.")
    batch = args.batch_size or config.train.batch_size
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = UNet(
        d.channels,
        d.channels,
        m.ch,
        m.ch_mult,
        m.num_res_blocks,
        m.attn_resolutions,
        m.head_dim,
        m.dropout,
        d.image_size,
    ).to(device)
    ema = [p.detach().clone() for p in model.parameters()]
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=config.optim.learning_rate)
    net = torch.compile(model) if args.compile else model
    x = torch.rand(batch, d.channels, d.image_size, d.image_size, device=device) * 2 - 1

    def step():
        t = torch.rand(batch, device=device)
        logsnr = cosine_logsnr(t)
        alpha2 = torch.sigmoid(logsnr)[:, None, None, None]
        z = alpha2.sqrt() * x + (1 - alpha2).sqrt() * torch.randn_like(x)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            x_hat = net(z, logsnr).float()
        weight = torch.clamp(torch.exp(logsnr), min=1.0)  # truncated SNR
        loss = (weight * ((x - x_hat) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, list(model.parameters()), 1 - config.train.ema_decay)
        return loss

    began = time.perf_counter()
    step()
    torch.cuda.synchronize() if device == "cuda" else None
    warm = time.perf_counter() - began
    for _ in range(3):
        step()
    torch.cuda.synchronize() if device == "cuda" else None
    began = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize() if device == "cuda" else None
    step_s = (time.perf_counter() - began) / args.steps
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    mode = ("compiled" if args.compile else "eager") + ("" if args.dtype == "float32" else f" {args.dtype}")
    print(f"torch {torch.__version__} on {name}")
    print(
        f"| torch {mode} {args.setup} | {params / 1e6:.2f}M | {batch} | {warm:.1f} | {step_s:.3f} "
        f"| {batch / step_s:.1f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()

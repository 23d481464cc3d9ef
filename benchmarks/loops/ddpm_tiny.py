"""Tiny DDPM (epsilon prediction) on 16x16 RGB, AdamW + linear warm-up / constant lr,
an EMA of the weights.

Data: smooth colour fields (bicubic-upsampled 4x4 noise) + a linear ramp + 1-2 sharp
filled circles / rectangles, scaled to [-1, 1]. Diffusion: T = 200 steps, cosine
alpha-bar schedule (Nichol & Dhariwal, betas clipped to 0.999). Each step draws
t ~ U{0..T-1} and eps ~ N(0, I) per image, x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.
Model: a small UNet (8/16/32 channels at 16/8/4 px, one residual block per level and
per up level, GroupNorm(4) + SiLU, stride-2 conv down, nearest upsample + concatenated
skips), sinusoidal timestep embedding -> 2-layer MLP added to every residual block;
output conv zero-initialised (so the untrained model predicts eps = 0).
Loss: MSE(eps_pred, eps).
Optimizer: AdamW (weight_decay 0.01), lr linear warm-up over the first warmup_steps
optimizer steps, then constant. Gradient clipping to grad_clip (None = no clipping;
after unscale_ under fp16). EMA of the weights (decay 0.99 with the usual warm-up
min(0.99, (1 + n) / (10 + n)), updated after every optimizer step) is the model used
for validation.

on_step is called once per optimizer step. Net name: "model". output_std / output_mean
are those of the predicted noise.
Metric: val_eps_mse (min): epsilon-prediction MSE of the EMA model on 128 fixed val
images, with fixed timesteps (evenly spread over 0..T-1) and fixed noise (same for
every seed). on_epoch also gives "val_eps_mse_raw" (the non-EMA weights).
Convs run as im2col + matmul under fp16 autocast (CPU fp16 conv backward is very
slow in this torch build); fp32 / bf16 use the native conv.

lr regions (lr = peak AdamW lr, DEFAULTS otherwise, 4 epochs x 30 optimizer steps):
Measured (seeds 0 and 1, fp32 / bf16 / fp16, 1 CPU thread). Untrained (lr = 0, the
zero-init output predicts eps = 0): 0.9949 for every seed and precision.
"ratio" = max finite training loss / first training loss.
  slow:      1e-4 ends at 0.903, 3e-4 at 0.712 (fp32 seed 0; smooth, undertrained).
  healthy:   1e-3 .. 5e-2, all precisions and both seeds: 0.368-0.374 at 1e-3, 0.231 at
             3e-3 (fp32 seed 0), 0.178-0.190 at 1e-2 .. 4e-2, 0.192-0.221 at 5e-2;
             ratio <= 1.36, grad norm <= 5.2. DEFAULTS lr = 1e-2.
  edge (spiky, may or may not recover): 6e-2 .. 0.1, depends on seed and precision.
             Some runs stay healthy (fp32 6e-2: 0.208-0.209; bf16 / fp16 seed 0 at 7e-2:
             0.198-0.199, fp16 with 3 skipped steps). The others collapse after the
             warm-up: the loss jumps from ~0.6 to 1.25-3.5 (ratio 1.25-3.5, grad norm
             4.5-32), the output std decays towards 0 and the model ends as the trivial
             eps = 0 predictor, 0.993-0.995 (fp32 seed 0 at 7e-2 and 0.1, bf16 seed 1 at
             7e-2, bf16 at 0.1). Only fp32 seed 1 recovers: 0.1 collapses in epoch 1
             (0.993) and relearns to 0.279; 7e-2 starts to (EMA 0.971, raw 0.940).
             fp16: a collapsed run's forward later overflows to nan (seed 1 at 7e-2: from
             step 48, ~30 steps after the collapse; 70-93 nan losses of 120); every later
             step is skipped (loss scale halves down to ~1e-17) and val_eps_mse is nan
             (fp16 seed 1 at 7e-2, both seeds at 0.1).
  diverges:  >= 0.15 (fp32 / bf16): collapses within the warm-up, ratio 1.6-18 (1.0:
             3.7-18), grad norm up to 190, ends at 0.993-0.995, no better than untrained.
             fp16 at 0.3: nan losses from epoch 1 (108-109 of 120 steps), val nan.
SWEEP_LR = (5e-4, 0.5): ~31% of log-uniform draws land at >= 6e-2 (edge or diverged),
~26% at >= 8e-2.
CPU seconds per run (DEFAULTS, 1 thread, process time, on a loaded 2-core AVX2 machine
where unet_ema.py takes 10.2 s fp32 / 59 s bf16): fp32 4.9-5.4 (up to 7.6 when
loaded), bf16 18-21 (bf16 conv takes the slow non-mkldnn path on this CPU), fp16 27
(~5x fp32: the fp16 im2col matmuls are small and slow here).
"""

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULTS = {
    "lr": 1e-2,
    "precision": "fp32",
    "epochs": 4,
    "seed": 0,
    "steps_per_epoch": 30,
    "batch_size": 16,
    "grad_clip": 1.0,
    "weight_decay": 0.01,
    "warmup_steps": 20,
    "ema_decay": 0.99,
    "timesteps": 200,
    "channels": 8,
    "n_val": 128,
}
METRIC = "val_eps_mse"
MODE = "min"
SWEEP_LR = (5e-4, 0.5)


# ----------------------------------------------------------------------------- data
def make_images(n, size, gen):
    """Smooth colour fields + a ramp + sharp shapes, values in [-1, 1]."""
    base = torch.rand(n, 3, 4, 4, generator=gen)
    img = F.interpolate(base, size=(size, size), mode="bicubic", align_corners=False)
    ys = torch.linspace(0, 1, size).view(1, 1, size, 1)
    xs = torch.linspace(0, 1, size).view(1, 1, 1, size)
    a = torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1
    b = torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1
    img = img + 0.3 * (a * xs + b * ys)
    for j in range(2):
        present = torch.ones(n, 1, 1, 1) if j == 0 else (torch.rand(n, 1, 1, 1, generator=gen) < 0.5).float()
        col = torch.rand(n, 3, 1, 1, generator=gen)
        cx = torch.rand(n, 1, 1, 1, generator=gen) * 0.6 + 0.2
        cy = torch.rand(n, 1, 1, 1, generator=gen) * 0.6 + 0.2
        r = torch.rand(n, 1, 1, 1, generator=gen) * 0.2 + 0.1
        is_circle = (torch.rand(n, 1, 1, 1, generator=gen) < 0.5).float()
        circ = (((xs - cx) ** 2 + (ys - cy) ** 2) < r**2).float()
        rect = (((xs - cx).abs() < r) & ((ys - cy).abs() < r * 0.7)).float()
        m = present * (is_circle * circ + (1 - is_circle) * rect)
        img = img * (1 - m) + col * m
    return img.clamp(0, 1) * 2 - 1


def cosine_alpha_bar(T, s=0.008):
    """alpha_bar_t for t = 0..T-1 from the cosine schedule (betas clipped to 0.999)."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0).float()


def q_sample(x0, t, noise, alpha_bar):
    ab = alpha_bar[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


# ----------------------------------------------------------------------------- model
def _fp16_autocast_on():
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16


class Conv2d(nn.Conv2d):
    """nn.Conv2d that runs as im2col + matmul under fp16 autocast (same math)."""

    def forward(self, x):
        if not _fp16_autocast_on():
            return super().forward(x)
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph, pw = self.padding
        ho = (h + 2 * ph - kh) // sh + 1
        wo = (w + 2 * pw - kw) // sw + 1
        # im2col by shifted slices (same layout as F.unfold)
        xp = F.pad(x, (pw, pw, ph, ph))
        cols = torch.stack(
            [
                xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
                for i in range(kh)
                for j in range(kw)
            ],
            2,
        ).reshape(n, -1, ho * wo)  # n, C*k*k, L
        out = torch.matmul(self.weight.view(self.out_channels, -1), cols)  # fp16 matmul
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1).to(out.dtype)
        return out.view(n, self.out_channels, ho, wo)


def timestep_embedding(t, dim, max_period=10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float().view(-1, 1) * freqs.view(1, -1)
    return torch.cat([torch.cos(args), torch.sin(args)], 1)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, tdim):
        super().__init__()
        self.n1 = nn.GroupNorm(4, cin)
        self.c1 = Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(tdim, cout)
        self.n2 = nn.GroupNorm(4, cout)
        self.c2 = Conv2d(cout, cout, 3, padding=1)
        self.skip = Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.c1(F.silu(self.n1(x)))
        h = h + self.t(temb).to(h.dtype)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x).to(h.dtype) + h


class TinyUNet(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.c = c
        tdim = 4 * c
        self.temb = nn.Sequential(nn.Linear(c, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.inp = Conv2d(3, c, 3, padding=1)  # 16x16
        self.r1 = ResBlock(c, c, tdim)
        self.d1 = Conv2d(c, 2 * c, 3, stride=2, padding=1)  # 8x8
        self.r2 = ResBlock(2 * c, 2 * c, tdim)
        self.d2 = Conv2d(2 * c, 4 * c, 3, stride=2, padding=1)  # 4x4
        self.mid = ResBlock(4 * c, 4 * c, tdim)
        self.r3 = ResBlock(6 * c, 2 * c, tdim)  # up to 8x8, skip from r2
        self.r4 = ResBlock(3 * c, c, tdim)  # up to 16x16, skip from r1
        self.out_norm = nn.GroupNorm(4, c)
        self.out = Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, t):
        temb = self.temb(timestep_embedding(t, self.c))
        h1 = self.r1(self.inp(x), temb)
        h2 = self.r2(self.d1(h1), temb)
        h3 = self.mid(self.d2(h2), temb)
        u = F.interpolate(h3, scale_factor=2, mode="nearest")
        u = self.r3(torch.cat([u, h2.to(u.dtype)], 1), temb)
        u = F.interpolate(u, scale_factor=2, mode="nearest")
        u = self.r4(torch.cat([u, h1.to(u.dtype)], 1), temb)
        return self.out(F.silu(self.out_norm(u)))


def _autocast(precision):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast("cpu", dtype=torch.float16)
    return torch.autocast("cpu", enabled=False)


def _mse(pred, target):
    v = F.mse_loss(pred.float(), target).item()
    return v if math.isfinite(v) else float("nan")


# ----------------------------------------------------------------------------- train
def train(config, on_step, on_epoch):
    cfg = dict(DEFAULTS)
    cfg.update(config or {})
    torch.set_num_threads(1)
    torch.manual_seed(cfg["seed"])
    precision = cfg["precision"]
    bs, spe, epochs = cfg["batch_size"], cfg["steps_per_epoch"], cfg["epochs"]
    T = cfg["timesteps"]
    alpha_bar = cosine_alpha_bar(T)

    gen = torch.Generator().manual_seed(cfg["seed"])
    train_x0 = make_images(bs * spe, 16, gen)
    # fixed validation set: images, timesteps and noise are the same for every seed
    val_gen = torch.Generator().manual_seed(12345)
    n_val = cfg["n_val"]
    val_x0 = make_images(n_val, 16, val_gen)
    val_t = torch.linspace(0, T - 1, n_val).round().long()
    val_eps = torch.randn(val_x0.shape, generator=val_gen)
    val_xt = q_sample(val_x0, val_t, val_eps, alpha_bar)
    shuffle_gen = torch.Generator().manual_seed(cfg["seed"] + 1)
    noise_gen = torch.Generator().manual_seed(cfg["seed"] + 2)

    model = TinyUNet(cfg["channels"])
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], foreach=True)
    warmup = max(1, int(cfg["warmup_steps"]))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    params = list(model.parameters())
    clip = cfg["grad_clip"] if cfg["grad_clip"] else float("inf")
    decay = cfg["ema_decay"]

    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(bs * spe, generator=shuffle_gen)
        for i in range(spe):
            x0 = train_x0[perm[i * bs : (i + 1) * bs]]
            t = torch.randint(0, T, (bs,), generator=noise_gen)
            eps = torch.randn(x0.shape, generator=noise_gen)
            xt = q_sample(x0, t, eps, alpha_bar)
            opt.zero_grad(set_to_none=True)
            with _autocast(precision):
                pred = model(xt, t).float()
                loss = F.mse_loss(pred, eps)
            skipped = 0.0
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                gn = torch.nn.utils.clip_grad_norm_(params, clip)
                before = scaler.get_scale()
                scaler.step(opt)
                scaler.update()
                scale = scaler.get_scale()
                skipped = 1.0 if scale < before else 0.0
            else:
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(params, clip)
                opt.step()
                scale = 1.0
            lr_used = opt.param_groups[0]["lr"]
            sched.step()
            d = min(decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - d)
            step += 1
            o = pred.detach()
            on_step(
                step,
                {
                    "loss": loss.item(),
                    "model/lr": lr_used,
                    "model/loss_scale": float(scale),
                    "model/skipped": skipped,
                    "model/grad_norm": float(gn),
                    "model/weight_norm_last": model.out.weight.detach().norm().item(),
                    "output_std": o.std().item(),
                    "output_mean": o.mean().item(),
                },
            )

        ema.eval()
        model.eval()
        with torch.no_grad(), _autocast(precision):
            pred_ema = ema(val_xt, val_t).float()
            pred_raw = model(val_xt, val_t).float()
        on_epoch(epoch, {METRIC: _mse(pred_ema, val_eps), "val_eps_mse_raw": _mse(pred_raw, val_eps)})

"""Unconditional WGAN-GP on procedural 16x16 RGB shapes.

Data: random backgrounds (flat colour + a linear ramp) with 1-2 sharp filled
circles / rectangles, pixels in [-1, 1]. Generator: z (32) -> linear -> 64x4x4 ->
2x (nearest upsample + 3x3 conv + LeakyReLU) -> 3x3 conv -> tanh. Critic: two
stride-2 4x4 convs (LeakyReLU, no normalisation) -> linear -> scalar.
Training: n_critic = 3 critic steps per generator step, Adam(betas=(0.0, 0.9)) for
both nets at the same constant lr, gradient penalty weight 10 on random
interpolates. One GradScaler per net under fp16; the gradient penalty is computed
from scaled gradients and unscaled by hand (the usual AMP recipe), so an overflow
in the penalty's backward makes the scaler skip that critic step.

on_step is called once per generator step. "loss" is the critic's loss
(-W + 10 * gp, W = E[c(real)] - E[c(fake)]) of the last critic step of the block;
the c/* values also come from that last critic step, except "c/skipped", which is
1.0 if any of the n_critic critic steps was skipped by the scaler. Extra keys:
"g_loss", "wasserstein", "gp".

Metric: val_fd (min). A Frechet-style distance with diagonal covariances between
256 generated images (fixed noise) and 256 fixed real val images, on features =
per-channel pixel mean/std + a fixed random conv embedding (seeded, 32 channels,
ReLU, global average pool). Lower is better.
Convs run as im2col + matmul under fp16 autocast (CPU fp16 conv backward is very
slow in this torch build); fp32 / bf16 use the native conv.

lr regions (same lr for G and C, DEFAULTS otherwise, 4 epochs x 25 generator steps):
Measured (seeds 0 and 1, fp32 / bf16 / fp16, 1 CPU thread). Untrained: val_fd 2.11
(real vs real val images: 0.006; uniform noise images: 1.43).
  slow:      1e-4 .. 3e-4: losses small and smooth, but G barely moves in 100 steps
             (1.89-2.03, i.e. no better than untrained without being unstable).
             1e-3: 0.61-1.43, still undertrained.
  healthy:   2e-3 .. 5e-3, all precisions and both seeds: ends at 0.16-0.71 (2e-3:
             0.32-0.68, 3e-3: 0.16-0.45, 5e-3: 0.16-0.71, a GAN's epoch-to-epoch noise);
             critic grad norm <= 250 (fp16: inf only on skipped steps), |loss| <= 40.
             DEFAULTS lr = 3e-3.
  spiky but recovers: 1e-2: val_fd jumps to 1.0-1.8 around epoch 3 (max |loss| 18-300,
             critic grad norm up to 850), then back to 0.18-0.43 by epoch 4 in 5 of 6 runs
             (bf16 seed 0 ends at 1.04).
  diverges:  >= 1.5e-2: G's tanh output saturates (output_std 0.96-1.0), critic grad
             norm ~1e3 (1.5e-2) to 1e7 (0.1), losses up to 1e2-1e8. val_fd ends at
             1.2-2.1 (one run 3.3) for 1.5e-2 .. 2e-2 (no better than noise images;
             the diagonal FD of saturated colour blobs is not far from that of the
             untrained G) and at 1.6-3.2 for 3e-2 .. 5e-2 (mostly >= untrained).
             At 0.1: 3.1-4.8 (fp32), G gets stuck (val_fd identical in all 4 epochs,
             5.2-8.5: bf16 outputs a constant image, output_std 0; fp16 seed 1 stays
             saturated at +-1), or nan losses and val_fd (fp16 seed 0).
  fp16 always has 1-6 skipped steps per net at the start while the scale settles
  (more when diverging: 10-70 at 0.1).
CPU seconds per run (DEFAULTS, 1 thread, on a loaded 2-core machine): fp32 4.9-6.9,
bf16 4.6-6.4, fp16 10-14 (the double backward of the gradient penalty through the
im2col convs; fp16 is ~2x fp32 here).
SWEEP_LR = (3e-4, 0.1) covers slow, healthy, spiky and diverging runs.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULTS = {
    "lr": 3e-3,
    "precision": "fp32",
    "epochs": 4,
    "seed": 0,
    "steps_per_epoch": 25,  # generator steps per epoch
    "batch_size": 16,
    "grad_clip": None,
    "n_critic": 3,
    "gp_weight": 10.0,
    "z_dim": 32,
    "n_val": 256,
}
METRIC = "val_fd"
MODE = "min"
SWEEP_LR = (3e-4, 0.1)


# ----------------------------------------------------------------------------- data
def make_images(n, size, gen):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.rand(n, 3, 1, 1, generator=gen)
    ramp_dir = torch.rand(n, 1, 1, 1, generator=gen) * 2 * math.pi
    ramp_amp = torch.rand(n, 3, 1, 1, generator=gen) * 0.5 - 0.25
    ramp = torch.cos(ramp_dir) * xx + torch.sin(ramp_dir) * yy
    img = base + ramp_amp * ramp
    for _ in range(2):
        present = (torch.rand(n, 1, 1, 1, generator=gen) < 0.8).float()
        col = torch.rand(n, 3, 1, 1, generator=gen)
        cx = torch.rand(n, 1, 1, 1, generator=gen) * 0.6 + 0.2
        cy = torch.rand(n, 1, 1, 1, generator=gen) * 0.6 + 0.2
        r = torch.rand(n, 1, 1, 1, generator=gen) * 0.2 + 0.1
        is_circle = (torch.rand(n, 1, 1, 1, generator=gen) < 0.5).float()
        circ = (((xx - cx) ** 2 + (yy - cy) ** 2) < r**2).float()
        rect = (((xx - cx).abs() < r) & ((yy - cy).abs() < r * 0.7)).float()
        m = present * (is_circle * circ + (1 - is_circle) * rect)
        img = img * (1 - m) + col * m
    return img.clamp(0, 1) * 2 - 1


# ----------------------------------------------------------------------------- model
def _fp16_autocast_on():
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16


class Conv2d(nn.Conv2d):
    """nn.Conv2d that runs as unfold + matmul under fp16 autocast (same math)."""

    def forward(self, x):
        if not _fp16_autocast_on():
            return super().forward(x)
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph, pw = self.padding
        ho = (h + 2 * ph - kh) // sh + 1
        wo = (w + 2 * pw - kw) // sw + 1
        # im2col by shifted slices (same layout as F.unfold, ~2x faster than fp16 im2col here)
        xp = F.pad(x, (pw, pw, ph, ph))
        cols = torch.stack(
            [
                xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
                for i in range(kh)
                for j in range(kw)
            ],
            2,
        ).reshape(n, -1, ho * wo)  # n, C*k*k, L
        wmat = self.weight.view(self.out_channels, -1)
        out = torch.matmul(wmat, cols)  # n, O, L  (autocast -> fp16)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1).to(out.dtype)
        return out.view(n, self.out_channels, ho, wo)


class Generator(nn.Module):
    def __init__(self, z_dim=32, ch=64):
        super().__init__()
        self.ch = ch
        self.fc = nn.Linear(z_dim, ch * 4 * 4)
        self.c1 = Conv2d(ch, ch // 2, 3, padding=1)
        self.c2 = Conv2d(ch // 2, ch // 4, 3, padding=1)
        self.out = Conv2d(ch // 4, 3, 3, padding=1)

    def forward(self, z):
        h = F.leaky_relu(self.fc(z), 0.2).view(z.shape[0], self.ch, 4, 4)
        h = F.leaky_relu(self.c1(F.interpolate(h, scale_factor=2, mode="nearest")), 0.2)
        h = F.leaky_relu(self.c2(F.interpolate(h, scale_factor=2, mode="nearest")), 0.2)
        return torch.tanh(self.out(h))


class Critic(nn.Module):
    def __init__(self, ch=32):
        super().__init__()
        self.c1 = Conv2d(3, ch, 4, stride=2, padding=1)  # 8x8
        self.c2 = Conv2d(ch, ch * 2, 4, stride=2, padding=1)  # 4x4
        self.out = nn.Linear(ch * 2 * 16, 1)

    def forward(self, x):
        h = F.leaky_relu(self.c1(x), 0.2)
        h = F.leaky_relu(self.c2(h), 0.2)
        return self.out(h.flatten(1))


# ----------------------------------------------------------------------------- metric
class _Embed:
    """Fixed random-feature embedding (same weights for every run)."""

    def __init__(self):
        g = torch.Generator().manual_seed(777)
        self.w1 = torch.randn(32, 3, 3, 3, generator=g) / math.sqrt(27)
        self.w2 = torch.randn(32, 32, 3, 3, generator=g) / math.sqrt(288)

    @torch.no_grad()
    def __call__(self, x):
        x = x.float()
        h = F.relu(F.conv2d(x, self.w1, padding=1))
        h = F.relu(F.conv2d(F.avg_pool2d(h, 2), self.w2, padding=1))
        feats = [x.mean((2, 3)), x.std((2, 3)), h.mean((2, 3))]
        return torch.cat(feats, 1)


def frechet_diag(a, b):
    mu_a, mu_b = a.mean(0), b.mean(0)
    sd_a, sd_b = a.std(0), b.std(0)
    return ((mu_a - mu_b) ** 2).sum().item() + ((sd_a - sd_b) ** 2).sum().item()


# ----------------------------------------------------------------------------- train
def _autocast(precision):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast("cpu", dtype=torch.float16)
    return torch.autocast("cpu", enabled=False)


def _step(opt, params, loss, scaler, clip):
    """backward + (unscale) + clip + step. Returns (grad_norm, scale, skipped)."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        gn = torch.nn.utils.clip_grad_norm_(params, clip)
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        scale = scaler.get_scale()
        return float(gn), float(scale), 1.0 if scale < before else 0.0
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    return float(gn), 1.0, 0.0


def train(config, on_step, on_epoch):
    cfg = dict(DEFAULTS)
    cfg.update(config or {})
    torch.set_num_threads(1)
    torch.manual_seed(cfg["seed"])
    precision = cfg["precision"]
    bs, spe, epochs = cfg["batch_size"], cfg["steps_per_epoch"], cfg["epochs"]
    n_critic, gpw, zd = cfg["n_critic"], cfg["gp_weight"], cfg["z_dim"]

    gen = torch.Generator().manual_seed(cfg["seed"])
    n_train = bs * spe * n_critic
    train_x = make_images(n_train, 16, gen)
    val_gen = torch.Generator().manual_seed(12345)  # same val set for every seed
    val_x = make_images(cfg["n_val"], 16, val_gen)
    val_z = torch.randn(cfg["n_val"], zd, generator=val_gen)
    embed = _Embed()
    val_feats = embed(val_x)
    shuffle_gen = torch.Generator().manual_seed(cfg["seed"] + 1)

    G, C = Generator(zd), Critic()
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg["lr"], betas=(0.0, 0.9))
    opt_c = torch.optim.Adam(C.parameters(), lr=cfg["lr"], betas=(0.0, 0.9))
    scaler_g = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    scaler_c = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    pg, pc = list(G.parameters()), list(C.parameters())
    clip = cfg["grad_clip"] if cfg["grad_clip"] else float("inf")

    step = 0
    for epoch in range(1, epochs + 1):
        G.train()
        C.train()
        perm = torch.randperm(n_train, generator=shuffle_gen)
        k = 0
        for _ in range(spe):
            # ---- critic
            c_skipped = 0.0
            for _ in range(n_critic):
                real = train_x[perm[k * bs : (k + 1) * bs]]
                k += 1
                z = torch.randn(bs, zd)
                opt_c.zero_grad(set_to_none=True)
                with _autocast(precision):
                    with torch.no_grad():
                        fake = G(z).float()
                    d_both = C(torch.cat([real, fake])).float()
                    d_real, d_fake = d_both[:bs].mean(), d_both[bs:].mean()
                    eps = torch.rand(bs, 1, 1, 1)
                    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
                    d_hat = C(x_hat).float().sum()
                    if scaler_c is not None:
                        sg = torch.autograd.grad(scaler_c.scale(d_hat), x_hat, create_graph=True)[0]
                        grads = sg.float() / scaler_c.get_scale()
                    else:
                        grads = torch.autograd.grad(d_hat, x_hat, create_graph=True)[0].float()
                    gp = ((grads.flatten(1).norm(dim=1) - 1) ** 2).mean()
                    w_dist = d_real - d_fake
                    c_loss = -w_dist + gpw * gp
                c_gn, c_scale, sk = _step(opt_c, pc, c_loss, scaler_c, clip)
                c_skipped = max(c_skipped, sk)

            # ---- generator
            for p in pc:
                p.requires_grad_(False)
            z = torch.randn(bs, zd)
            opt_g.zero_grad(set_to_none=True)
            with _autocast(precision):
                fake = G(z)
                g_loss = -C(fake).float().mean()
            g_gn, g_scale, g_sk = _step(opt_g, pg, g_loss, scaler_g, clip)
            for p in pc:
                p.requires_grad_(True)
            step += 1
            o = fake.detach().float()
            on_step(
                step,
                {
                    "loss": c_loss.item(),
                    "g_loss": g_loss.item(),
                    "wasserstein": w_dist.item(),
                    "gp": gp.item(),
                    "g/lr": opt_g.param_groups[0]["lr"],
                    "g/loss_scale": g_scale,
                    "g/skipped": g_sk,
                    "g/grad_norm": g_gn,
                    "g/weight_norm_last": G.out.weight.detach().norm().item(),
                    "c/lr": opt_c.param_groups[0]["lr"],
                    "c/loss_scale": c_scale,
                    "c/skipped": c_skipped,
                    "c/grad_norm": c_gn,
                    "c/weight_norm_last": C.out.weight.detach().norm().item(),
                    "output_std": o.std().item(),
                    "output_mean": o.mean().item(),
                },
            )

        G.eval()
        with torch.no_grad(), _autocast(precision):
            samples = G(val_z).float()
        fd = frechet_diag(embed(samples), val_feats)
        if not math.isfinite(fd):
            fd = float("nan")
        mean_diff = (samples.mean() - val_x.mean()).abs().item()
        on_epoch(epoch, {METRIC: fd, "val_mean_abs_diff": mean_diff})

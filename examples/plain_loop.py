"""A plain PyTorch training loop, as a user has it before adopting sweeps.

A small denoising autoencoder: noisy images in, clean images out. Run it: python examples/plain_loop.py
"""

import torch
import torch.nn.functional as F
from torch import nn

from trainables.data import procedural_images

LR = 1e-3
WIDTH = 16
NOISE = 0.1
EPOCHS = 5

torch.manual_seed(0)
train, val = procedural_images(256, 32, seed=0), procedural_images(64, 32, seed=1)
model = nn.Sequential(
    nn.Conv2d(3, WIDTH, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(WIDTH, WIDTH, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(WIDTH, 3, 3, padding=1),
)
optimizer = torch.optim.Adam(model.parameters(), lr=LR)
for epoch in range(EPOCHS):
    for start in range(0, len(train), 32):
        x = train[start : start + 32]
        loss = F.mse_loss(model(x + NOISE * torch.randn_like(x)), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        val_loss = F.mse_loss(model(val + NOISE * torch.randn_like(val)), val).item()
    print(f"epoch {epoch}: val_loss={val_loss:.5f}")

"""The loop of plain_loop.py as a function trainer: a sweep can now tune it, and stop it within steps.

A small denoising autoencoder: noisy images in, clean images out. Sweep: search_spaces/plain_loop_example.yaml
"""

import torch
import torch.nn.functional as F
from torch import nn

from trainables.data import procedural_images


def train(config, run):
    """One trial: ``config`` holds its parameters, ``run`` takes its steps, reports and checkpoints."""
    LR = config.get("lr", 1e-3)
    WIDTH = config.get("width", 16)
    NOISE = config.get("noise", 0.1)
    EPOCHS = run.epochs

    torch.manual_seed(config.seed)
    train, val = procedural_images(256, 32, seed=0), procedural_images(64, 32, seed=1)
    model = nn.Sequential(
        nn.Conv2d(3, WIDTH, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(WIDTH, WIDTH, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(WIDTH, 3, 3, padding=1),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    run.checkpoint({"model": model, "optimizer": optimizer})
    for epoch in range(run.restore(), EPOCHS):
        for start in range(0, len(train), 32):
            x = train[start : start + 32]
            loss = F.mse_loss(model(x + NOISE * torch.randn_like(x)), x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.step(loss=loss, optimizer=optimizer)
        with torch.no_grad():
            val_loss = F.mse_loss(model(val + NOISE * torch.randn_like(val)), val).item()
        print(f"epoch {epoch}: val_loss={val_loss:.5f}")
        run.report(epoch + 1, val_loss=val_loss)

"""Device selection shared by the training commands (one CPU, one GPU or torchrun ranks)."""

from __future__ import annotations

import torch


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` = the local rank's GPU when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device

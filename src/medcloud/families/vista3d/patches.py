"""Random training patches and simulated clicks for VISTA-3D (demo training and fine-tuning jobs)."""

from __future__ import annotations

import numpy as np
import torch


def training_batch(
    volumes: list[tuple[torch.Tensor, torch.Tensor]], size: int, rs: np.random.RandomState
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two patches [2, 1, size³]: one around a sphere (for the clicks), one anywhere (mostly background)."""
    first = random_patch(*volumes[rs.randint(len(volumes))], size, rs, around_foreground=True)
    second = random_patch(*volumes[rs.randint(len(volumes))], size, rs, around_foreground=False)
    return torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]])


def random_patch(
    image: torch.Tensor, label: torch.Tensor, size: int, rs: np.random.RandomState, around_foreground: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A [1, 1, size³] patch, around a foreground voxel or anywhere; padded where the volume is small."""
    pad = [(0, max(0, size - s)) for s in image.shape[1:]]
    flat = [p for pair in reversed(pad) for p in pair]
    image = torch.nn.functional.pad(image, flat, value=0.0)
    label = torch.nn.functional.pad(label, flat, value=0.0)
    shape = np.array(image.shape[1:])
    foreground = torch.nonzero(label[0])
    if len(foreground) and around_foreground:
        centre = foreground[rs.randint(len(foreground))].numpy() + rs.randint(-size // 4, size // 4 + 1, 3)
        start = np.clip(centre - size // 2, 0, shape - size)
    else:
        start = np.array([rs.randint(0, s - size + 1) for s in shape])
    window = tuple(slice(int(a), int(a) + size) for a in start)
    return image[(slice(None), *window)][None], label[(slice(None), *window)][None]


def sample_clicks(mask: torch.Tensor, rs: np.random.RandomState, sets: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """`sets` click sets [sets, 3, 3]: one to three positive clicks inside `mask`, sometimes a negative one outside.

    Unused places are padding (label -1), as VISTA-3D's own point sampler pads.
    """
    inside, outside = torch.nonzero(mask > 0), torch.nonzero(mask <= 0)
    coords, labels = torch.zeros(sets, 3, 3), -torch.ones(sets, 3, dtype=torch.long)
    for s in range(sets):
        n = 1 + rs.randint(2)
        for i in range(n):
            coords[s, i], labels[s, i] = inside[rs.randint(len(inside))].float(), 1
        if len(outside) and rs.rand() < 0.5:
            coords[s, n], labels[s, n] = outside[rs.randint(len(outside))].float(), 0
    return coords, labels

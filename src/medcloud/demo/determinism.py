"""Demo networks train the same on every machine: one thread, deterministic kernels, a private seed.

The demo bundles (and the small VISTA-3D and DeepEdit) are trained briefly on synthetic data, and tests
assert on what they learned. A training run's outcome moves with the number of intra-op threads (the
order of floating-point sums) and with nondeterministic kernels; inside `deterministic_training` it
depends on the seed alone. One thread also suits these tiny networks: spinning threads slow down
several-fold when other processes share the cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def deterministic_training(seed: int) -> Iterator[None]:
    """Seed torch (without touching the caller's RNG state), use one thread and deterministic algorithms."""
    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
            torch.set_num_threads(threads)

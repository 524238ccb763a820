"""Independent random streams derived from one root seed.

Every consumer asks for a stream by a path of names (``"client", 3, "round", 7, "augment"``); the
path is hashed into a ``numpy.random.SeedSequence`` spawn key, so adding a method, a client or a new
purpose never shifts the stream of another.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def _key(parts: tuple[object, ...]) -> list[int]:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def seed_sequence(root: int, *path: object) -> np.random.SeedSequence:
    return np.random.SeedSequence(entropy=root, spawn_key=_key(path))


def numpy_rng(root: int, *path: object) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(root, *path))


def int_seed(root: int, *path: object) -> int:
    return int(seed_sequence(root, *path).generate_state(1, dtype=np.uint64)[0] >> 1)


def torch_generator(root: int, *path: object, device: str = "cpu") -> torch.Generator:
    import torch  # here, so that the workflow can import seeding without loading torch

    generator = torch.Generator(device=device)
    generator.manual_seed(int_seed(root, *path))
    return generator

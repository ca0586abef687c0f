"""On-device batches with random crop (zero padding) and horizontal flip as batched tensor ops."""
from __future__ import annotations

import torch


def augment_batch(x: torch.Tensor, pad: int = 4, flip: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop of the original size from a zero-padded copy, and random horizontal flip.

    x: float or uint8 N x C x H x W. One gather for the crop (no per-sample loop). Randomness comes
    from `generator` (on x's device) so a seeded iterator is deterministic.
    """
    n, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
        rows = (dy[:, None] + torch.arange(h, device=dev)[None])  # n x h
        cols = (dx[:, None] + torch.arange(w, device=dev)[None])  # n x w
        xp = xp.gather(2, rows[:, None, :, None].expand(n, c, h, xp.shape[3]))
        x = xp.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    if flip:
        f = torch.rand(n, device=dev, generator=generator) < 0.5
        x = torch.where(f[:, None, None, None], x.flip(3), x)
    return x


class BatchIterator:
    """Iterate over (images in [0,1], labels) batches with the data kept on `device`.

    The uint8 images are moved to the device once; each batch is converted to `dtype` and optionally
    augmented there. `seed` fixes both the shuffle order and the augmentation. `state()` and
    `set_epoch()` make the iteration resumable: epoch e always yields the same batches.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = True,
                 augment: bool = False, pad: int = 4, drop_last: bool = False, seed: int = 0,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.batch_size, self.shuffle, self.augment, self.pad = batch_size, shuffle, augment, pad
        self.drop_last, self.seed, self.dtype, self.memory_format = drop_last, seed, dtype, memory_format
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.y)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        if self.world_size > 1:  # each rank takes a strided share of every global batch
            gb = self.batch_size * self.world_size
            usable = (n // gb) * gb if self.drop_last else n
            idx = idx[:usable][self.rank::self.world_size]
        return idx.to(self.device)

    def __len__(self) -> int:
        n = len(self.y) // self.world_size if self.world_size > 1 else len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        idx = self._indices()
        gen = None
        if self.augment:
            gen = torch.Generator(device=self.device).manual_seed(self.seed * 7919 + self.epoch + 1 + 1000003 * self.rank)
        nb = len(self)
        for b in range(nb):
            sel = idx[b * self.batch_size:(b + 1) * self.batch_size]
            xb = self.x[sel].to(self.dtype).div_(255.0)
            if self.augment:
                xb = augment_batch(xb, self.pad, True, gen)
            yield xb.contiguous(memory_format=self.memory_format), self.y[sel]

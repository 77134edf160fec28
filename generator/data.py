"""Training data streamed from disk: cases on the stage's grid, cached as .npy, cut into training items.

A ``VolumeSource`` gives case ``i``'s normalised high-res volume (2, X, Y, Z) (channels CT, PET) on the data
grid and its low-res average (2, X/f, Y/f, Z/f); ``NpyCache`` reads each case once through a reader
(a callable: index -> volume, e.g. read + resample onto the canvas) and keeps both as .npy files, memory-mapped
afterwards (a 3D patch reads only its part); ``TensorVolumes`` serves an in-memory tensor.

``CanvasCases`` is a torch Dataset whose items are keyed (case, step, item): the patch position of item
``item`` of step ``step`` comes from (seed, step, item, 1), so what a step sees does not depend on the number
of DataLoader workers or processes. ``step_batches`` yields the keys of each step for one process.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .config import StageConfig, patch_shape
from .stages import downsample, lowres_condition, position_channels, sr_condition, sr_training_pair


def keyed_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from the non-negative integers ``key`` (e.g. seed, step, item)."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


class TensorVolumes:
    """Volumes held in memory: (N, 2, X, Y, Z) normalised; low-res computed on demand."""

    def __init__(self, volumes: torch.Tensor, factor: int = 2):
        self.volumes, self.factor = volumes, factor

    def __len__(self) -> int:
        return int(self.volumes.shape[0])

    def high(self, i: int) -> torch.Tensor:
        return self.volumes[i].float()

    def low(self, i: int) -> torch.Tensor:
        return downsample(self.high(i)[None], self.factor)[0]


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save to a temporary file moved onto ``path`` (workers caching the same case never see half a file)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npy", dir=path.parent)
    os.close(fd)
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class NpyCache:
    """Volumes read once through ``read(i)`` ((2, X, Y, Z) normalised float32) and cached as .npy in ``folder``.

    Files: ``<name>.npy`` (high-res) and ``<name>-lo<f>.npy`` (its f x f x f average); ``names`` must be
    unique and stable (e.g. case id + a digest of the source files), so a re-run reuses the cache.
    """

    def __init__(self, read: Callable[[int], np.ndarray], names: Sequence[str], folder: str | Path, factor: int = 2):
        self.read, self.names, self.folder, self.factor = read, list(names), Path(folder), factor
        self.folder.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self.names)

    def _paths(self, i: int) -> tuple[Path, Path]:
        return self.folder / f"{self.names[i]}.npy", self.folder / f"{self.names[i]}-lo{self.factor}.npy"

    def ensure(self, i: int) -> None:
        """Read, place and cache case ``i`` unless both files exist."""
        high, low = self._paths(i)
        if high.is_file() and low.is_file():
            return
        volume = np.ascontiguousarray(self.read(i), dtype=np.float32)
        _save_npy(high, volume)
        _save_npy(low, downsample(torch.from_numpy(volume)[None], self.factor)[0].numpy())

    def high_array(self, i: int) -> np.ndarray:
        """The memory-mapped high-res volume (2, X, Y, Z)."""
        self.ensure(i)
        return np.load(self._paths(i)[0], mmap_mode="r")

    def high(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.high_array(i)))

    def low(self, i: int) -> torch.Tensor:
        self.ensure(i)
        return torch.from_numpy(np.load(self._paths(i)[1]))


def patch_origin(shape: Sequence[int], patch: Sequence[int], factor: int, generator: torch.Generator
                 ) -> tuple[int, ...]:
    """A random patch corner, on each axis a multiple of ``factor`` (aligned with the low-res grid)."""
    starts = []
    for n, p in zip(shape, patch):
        choices = (n - p) // factor + 1
        starts.append(int(torch.randint(0, choices, (1,), generator=generator)) * factor)
    return tuple(starts)


def augmentation_draw(config: StageConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Generator] | None:
    """Stage 2's noise-conditioning augmentation of one item: (level (1,), the generator that draws its unit
    noise), level uniform in [0, ``config.lowres_noise_max``]; None when the stage has no augmentation."""
    if config.kind != "sr" or not config.lowres_noise_max:
        return None
    return torch.rand(1, generator=generator) * config.lowres_noise_max, generator


def sr_patch(source, i: int, config: StageConfig, origin: Sequence[int], patch: Sequence[int],
             aug: tuple[torch.Tensor, torch.Generator] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual target (2, *patch), conditioning image (5 or 6, *patch)) of a stage-2 patch at ``origin``.

    The upsampled low-res is computed on the low-res region around the patch (one low-res voxel of margin,
    enough for trilinear interpolation), so it equals the whole volume's upsampling cut to the patch.
    ``aug`` (``augmentation_draw``): the region's noise-conditioning augmentation.
    """
    f = config.sr_factor
    low = source.low(i)
    lo_start = [max(o // f - 1, 0) for o in origin]
    lo_stop = [min((o + p) // f + 1, n) for o, p, n in zip(origin, patch, low.shape[1:])]
    region = low[None, :, lo_start[0]:lo_stop[0], lo_start[1]:lo_stop[1], lo_start[2]:lo_stop[2]]
    level, noise = (None, None) if aug is None else (aug[0], torch.randn(region.shape, generator=aug[1]))
    up, image = sr_condition(region, f, level, noise)
    cut = [o - s * f for o, s in zip(origin, lo_start)]
    crop = (slice(None), slice(cut[0], cut[0] + patch[0]), slice(cut[1], cut[1] + patch[1]),
            slice(cut[2], cut[2] + patch[2]))
    up, image = up[0][crop], image[0][crop]
    array = source.high_array(i) if hasattr(source, "high_array") else source.high(i).numpy()
    cube = array[:, origin[0]:origin[0] + patch[0], origin[1]:origin[1] + patch[1], origin[2]:origin[2] + patch[2]]
    high = torch.from_numpy(np.array(cube, dtype=np.float32))
    pos = position_channels(tuple(config.shape))[0]
    pos = pos[:, origin[0]:origin[0] + patch[0], origin[1]:origin[1] + patch[1], origin[2]:origin[2] + patch[2]]
    return high - up, torch.cat([image[:2], pos, image[5:]], dim=0)


class CanvasCases(Dataset):
    """Training items of one stage keyed (case, step, item): {"x0", "image" (or absent), "demographics", "item"}.

    demographics: (N, 4) raw (age years, sex F=0/M=1, height m, weight kg), NaN where a field is unknown.
    """

    def __init__(self, source, demographics: torch.Tensor, config: StageConfig, seed: int = 0):
        self.source, self.demographics, self.config, self.seed = source, demographics.float(), config, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        case, step, item = (int(k) for k in key)
        config, out = self.config, {"demographics": self.demographics[case], "item": torch.tensor(item)}
        if config.kind == "lowres":
            out["x0"] = self.source.low(case)
            if config.network.in_channels > config.network.out_channels:
                out["image"] = lowres_condition(out["x0"][None])[0]
            return out
        patch = patch_shape(config)
        aug = augmentation_draw(config, keyed_generator(self.seed, step, item, 2))
        if patch is None:
            high = self.source.high(case)[None]
            noise = None if aug is None else torch.randn((1, 2, *(n // config.sr_factor for n in high.shape[2:])),
                                                         generator=aug[1])
            x0, image = sr_training_pair(high, config.sr_factor, None if aug is None else aug[0], noise)
            out.update(x0=x0[0], image=image[0])
            return out
        origin = patch_origin(config.shape, patch, config.sr_factor, keyed_generator(self.seed, step, item, 1))
        out["x0"], out["image"] = sr_patch(self.source, case, config, origin, patch, aug)
        return out


def split_cases(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) case indices: a keyed random ``fraction`` (at least 1 when > 0) held out."""
    n_val = min(max(int(round(fraction * n)), 1 if fraction > 0 else 0), max(n - 1, 0))
    order = torch.randperm(n, generator=keyed_generator(seed, 2**32 - 1)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def step_keys(cases: Sequence[int], batch: int, step: int, seed: int, rank: int = 0, world: int = 1
              ) -> list[tuple[int, int, int]]:
    """This process's keys of step ``step``: ``batch x world`` cases drawn with replacement from (seed, step);
    rank r takes items r, r + world, ..."""
    total = batch * world
    drawn = torch.randint(len(cases), (total,), generator=keyed_generator(seed, step))
    return [(cases[int(drawn[item])], step, item) for item in range(rank, total, world)]


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack the items' tensors (keys present in every item)."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class StepKeys:
    """The batch sampler of a run: for each step of ``steps``, this process's keys (``step_keys``), made lazily."""

    def __init__(self, cases: Sequence[int], batch: int, steps: range, seed: int, rank: int = 0, world: int = 1):
        self.cases, self.batch, self.steps, self.seed = list(cases), batch, steps, seed
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in self.steps:
            yield step_keys(self.cases, self.batch, step, self.seed, self.rank, self.world)

    def __len__(self) -> int:
        return len(self.steps)


def step_loader(dataset: CanvasCases, cases: Sequence[int], batch: int, steps: range, seed: int, rank: int = 0,
                world: int = 1, workers: int = 0) -> Iterator[tuple[int, dict, list[int]]]:
    """(step, stacked items, item numbers) for every step of ``steps``, read by ``workers`` DataLoader workers."""
    sampler = StepKeys(cases, batch, steps, seed, rank, world)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                        prefetch_factor=2 if workers else None)
    for step, items in zip(steps, loader):
        yield step, items, items.pop("item").tolist()

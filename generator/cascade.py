"""The cascade: stage 1 samples a low-res (16 mm) PET/CT from demographics; stage 2 adds the residual
detail at 8 mm (super-resolution conditioned on the upsampled low-res volume and the canvas positions).

Per-case seeding: case ``index`` of a run with ``seed`` draws all its noise from a CPU torch.Generator
seeded by (seed, index), so a case's volumes do not depend on the batch it was generated in (up to float
rounding of batched convolutions) nor on the device.

Output is in RAS+ (x toward the patient's right). Stages trained on x-mirrored anatomy (``mirror_x`` in their
config) sample exactly as they were trained and the final volumes are flipped along x: the exact equivalent
of the same networks trained on unmirrored data (stage 2 sees stage 1's output in the frame it was trained in).
The stages may differ in their frame (a stage 1 retrained on RAS+ phantoms before the bundled stage 2,
trained mirrored): stage 1's output is then flipped along x before stage 2 (the canvas is centred in x).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from .checkpoints import CheckpointError, bundled_folder, check_safetensors, load_stage, PICKLE_SUFFIXES
from .config import StageConfig, check_sampling
from .diffusion import Denoiser, karras_sigmas
from .intensity import from_unit
from .memory import heap_reuse
from .networks import channels_last
from .population import PopulationModel, parse_sex
from .precision import autocast, checked_precision
from .sampling import chunked, get_sampler, guided
from .stages import canvas_affine, flip_x, lowres_condition, sr_condition, sr_in_channels


def case_seed(seed: int, index: int) -> int:
    """A 63-bit seed for case ``index`` of a run with ``seed`` (numpy SeedSequence of the pair)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def case_noise(seed: int, index: int, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """Standard normal noise tensors of ``shapes`` for one case, drawn in order on the CPU."""
    gen = torch.Generator().manual_seed(case_seed(seed, index))
    return [torch.randn(shape, generator=gen) for shape in shapes]


def demographics_tensor(demographics: Mapping[str, Any]) -> torch.Tensor:
    """(N, 4) float tensor (age years, sex F=0/M=1, height m, weight kg); ValueError for an unknown sex."""
    sex = [1.0 if parse_sex(s) == "M" else 0.0 for s in demographics["sex"]]
    cols = [np.asarray(demographics["age"], float), np.asarray(sex), np.asarray(demographics["height_m"], float),
            np.asarray(demographics["weight_kg"], float)]
    table = np.stack(cols, 1)
    if not np.isfinite(table).all():
        raise ValueError("demographics have missing values (age, height_m and weight_kg are required)")
    return torch.as_tensor(table, dtype=torch.float32)


@dataclass(frozen=True)
class SamplingSettings:
    """Resolved sampling settings of a run (what a generated cohort records)."""

    lowres_sampler: str
    lowres_steps: int
    guidance: float
    sr_sampler: str
    sr_steps: int
    sr_chunk: int | None = None
    guidance_sigma: tuple[float, float] | None = None  # guidance only between these noise levels (None: all)


@dataclass(frozen=True)
class SamplingPlan:
    """What every batch of a run uses: sigma schedules, (guided / chunked) networks, samplers, noise shapes."""

    lowres_sigmas: torch.Tensor
    sr_sigmas: torch.Tensor
    lowres_model: Callable[..., torch.Tensor]
    sr_model: Callable[..., torch.Tensor]
    lowres_sampler: Callable[..., torch.Tensor]
    sr_sampler: Callable[..., torch.Tensor]
    lowres_positions: bool  # stage 1 takes the 3 position channels
    noise_shapes: tuple[tuple[int, ...], ...]  # stage 1, stage 2 (and augmentation) noise (C, X, Y, Z)
    lowres_noise: float | None = None  # stage 2's augmentation level (None: a stage 2 without augmentation)


@dataclass
class Cascade:
    """Both stages, the population model, the device and the sampling precision ("fp32", "bf16" autocast,
    or "auto": bf16 where the device runs it fast). Build with ``load_cascade``."""

    lowres: Denoiser
    lowres_config: StageConfig
    sr: Denoiser
    sr_config: StageConfig
    population: PopulationModel | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    meta: dict = field(default_factory=dict)
    precision: str = "fp32"

    @property
    def affine(self) -> np.ndarray:
        """RAS+ affine of the output (8 mm canvas)."""
        return canvas_affine(self.sr_config.voxel_mm, self.sr_config.fov_mm)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Output volume shape (X, Y, Z)."""
        return tuple(self.sr_config.shape)

    @property
    def mirror_x(self) -> bool:
        """Stage 2 was trained on x-mirrored anatomy; generated volumes are flipped back to RAS+."""
        return bool(self.sr_config.mirror_x)

    @property
    def frames_differ(self) -> bool:
        """The stages were trained in opposite x frames: stage 1's output is flipped into stage 2's frame."""
        return bool(self.lowres_config.mirror_x) != bool(self.sr_config.mirror_x)

    @property
    def checkpoint_id(self) -> str:
        """Short digest of both stages' weights and the output orientation (identifies the checkpoint in
        generated cohorts; an interrupted run of unflipped output is not resumed with flipped output)."""
        text = f"{self.meta.get('lowres_sha256', 'random')}-{self.meta.get('sr_sha256', 'random')}"
        text += "-mirror_x" if self.mirror_x else ""
        text += "-lowres_flipped" if self.frames_differ else ""
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def settings(self, steps: int | None = None, guidance: float | None = None, sr_steps: int | None = None,
                 sr_chunk: int | None = None) -> SamplingSettings:
        """Defaults of the checkpoint overridden by the given values; ValueError for values not finite or in range."""
        check_sampling(steps, guidance, sr_steps)
        lo, sr = self.lowres_config.schedule, self.sr_config.schedule
        return SamplingSettings(lo.sampler, int(steps or lo.steps), float(lo.guidance if guidance is None else guidance),
                                sr.sampler, int(sr_steps or sr.steps), sr_chunk,
                                None if lo.guidance_sigma is None else tuple(float(v) for v in lo.guidance_sigma))

    def prepare(self, demographics: Mapping[str, Any], warn: bool = True, seed: int = 0,
                indices: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Demographics as used for conditioning: sex checked (ValueError), values clamped to the training range.

        Out-of-range age/height/weight are clamped with a UserWarning (the networks never saw them; a
        diffusion model extrapolates unreliably), never refused. A missing height_m/weight_kg (column absent or
        NaN) is drawn from the population model given sex and age (from ``seed`` and the row's case index in
        ``indices``, default 0..n-1); without a population model it is a ValueError naming the columns.
        """
        missing = [k for k in ("age", "sex") if k not in demographics]
        if missing:
            raise ValueError(f"demographics lack {' and '.join(missing)} (columns age, sex, height_m, weight_kg)")
        n = len(np.asarray(demographics["sex"]))
        cols = {k: np.asarray(demographics[k]) if k in demographics else np.full(n, np.nan)
                for k in ("age", "sex", "height_m", "weight_kg")}
        cols["sex"] = np.asarray([parse_sex(s) for s in cols["sex"]])
        if self.population is None:
            return cols
        if not all(np.isfinite(np.asarray(cols[k], float)).all() for k in ("height_m", "weight_kg")):
            cols = self.population.fill_missing_cases(cols, seed, indices)
        clamped, _ = self.population.clamp(cols, warn=warn)
        return clamped

    def iter_generate(self, demographics: Mapping[str, Any], seed: int = 0, steps: int | None = None,
                      guidance: float | None = None, batch_size: int = 8, indices: Sequence[int] | None = None,
                      sr_steps: int | None = None, sr_chunk: int | None = None,
                      callback: Callable[[int], None] | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (row, CT HU float32 (X, Y, Z), PET SUV float32 (X, Y, Z)) per demographics row, in order.

        ``indices``: the case index of each row for per-case seeding (default 0..n-1); a resumed run passes
        the indices of its missing cases so that they come out as in an uninterrupted run.
        ``callback(k)`` is called after each batch with the number of cases it finished.
        """
        table = self.prepare(demographics, seed=seed, indices=indices)
        cond_all = demographics_tensor(table)
        n = cond_all.shape[0]
        indices = list(range(n)) if indices is None else [int(i) for i in indices]
        if len(indices) != n:
            raise ValueError(f"{len(indices)} indices for {n} demographics rows")
        plan = self.plan(self.settings(steps, guidance, sr_steps, sr_chunk))
        with heap_reuse(self.device.type == "cpu"):  # activations reused, not faulted in anew (memory.py)
            for start in range(0, n, max(1, int(batch_size))):
                rows = range(start, min(n, start + batch_size))
                noises = [case_noise(seed, indices[r], plan.noise_shapes) for r in rows]
                ct, pet = self.sample_batch(plan, noises, cond_all[list(rows)])
                for k, row in enumerate(rows):
                    yield row, ct[k].numpy().astype(np.float32), pet[k].numpy().astype(np.float32)
                if callback is not None:
                    callback(len(rows))

    def plan(self, s: SamplingSettings) -> SamplingPlan:
        """The sigma schedules, networks and samplers of ``s`` on this cascade's device."""
        lo_cfg, sr_cfg = self.lowres_config, self.sr_config
        lo_sigmas = karras_sigmas(s.lowres_steps, lo_cfg.schedule.sigma_min, lo_cfg.schedule.sigma_max,
                                  lo_cfg.schedule.rho, self.device)
        sr_sigmas = karras_sigmas(s.sr_steps, sr_cfg.schedule.sigma_min, sr_cfg.schedule.sigma_max,
                                  sr_cfg.schedule.rho, self.device)
        shapes = ((lo_cfg.network.out_channels, *lo_cfg.shape), (sr_cfg.network.out_channels, *sr_cfg.shape))
        augmented = sr_cfg.lowres_noise_max > 0
        return SamplingPlan(lo_sigmas, sr_sigmas, guided(self.lowres, s.guidance, s.guidance_sigma),
                            chunked(self.sr, s.sr_chunk, 8) if s.sr_chunk else self.sr,
                            get_sampler(s.lowres_sampler), get_sampler(s.sr_sampler),
                            lo_cfg.network.in_channels > lo_cfg.network.out_channels,
                            shapes + ((shapes[0],) if augmented else ()),
                            sr_cfg.schedule.lowres_noise if augmented else None)

    def sample_batch(self, plan: SamplingPlan, noises: Sequence[Sequence[torch.Tensor]], demographics: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(CT HU, PET SUV), each (B, X, Y, Z) float32 on the CPU in RAS+, from per-case (stage 1, stage 2)
        standard normal noise and (B, 4) demographics."""
        cond = {"demographics": demographics.to(self.device)}
        with torch.inference_mode():
            x = torch.stack([z[0] for z in noises]).to(self.device) * plan.lowres_sigmas[0]
            lo_cond = dict(cond, image=lowres_condition(x) if plan.lowres_positions else None)
            with autocast(self.precision, self.device):  # the networks only; sampler arithmetic is float32
                x_lo = plan.lowres_sampler(plan.lowres_model, x, plan.lowres_sigmas, lo_cond).float()
        return self.super_resolve(plan, x_lo.flip(2) if self.lowres_config.mirror_x else x_lo, noises, demographics)

    def super_resolve(self, plan: SamplingPlan, x_lo: torch.Tensor, noises: Sequence[Sequence[torch.Tensor]],
                      demographics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2 alone: (CT HU, PET SUV), each (B, X, Y, Z) float32 on the CPU in RAS+, from a normalised
        RAS+ low-res batch ``x_lo`` (B, 2, X / f, Y / f, Z / f), the per-case noise of ``sample_batch`` (its
        stage-1 entry unused) and (B, 4) demographics."""
        cond = {"demographics": demographics.to(self.device)}
        with torch.inference_mode():
            x_lo = x_lo.to(self.device).flip(2) if self.mirror_x else x_lo.to(self.device)  # into stage 2's frame
            aug = None if plan.lowres_noise is None else torch.stack([z[2] for z in noises]).to(self.device)
            up, image = sr_condition(x_lo, self.sr_config.sr_factor, plan.lowres_noise, aug)
            r = torch.stack([z[1] for z in noises]).to(self.device) * plan.sr_sigmas[0]
            with autocast(self.precision, self.device):
                residual = plan.sr_sampler(plan.sr_model, r, plan.sr_sigmas, dict(cond, image=image)).float()
            ct, pet = from_unit((up + residual).cpu())
        return (flip_x(ct), flip_x(pet)) if self.mirror_x else (ct, pet)

    def generate(self, demographics: Mapping[str, Any], seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, batch_size: int = 8, **kwargs: Any
                 ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """One (CT HU float32 (X, Y, Z), PET SUV float32 (X, Y, Z), 4x4 affine) per demographics row.

        demographics: a DataFrame or mapping with columns age (years), sex ("F"/"M"), height_m, weight_kg.
        steps/guidance: stage 1 sampler steps and classifier-free guidance scale (default: the checkpoint's).
        Further keywords: indices, sr_steps, sr_chunk (see ``iter_generate``).
        """
        return [(ct, pet, self.affine.copy()) for _, ct, pet in
                self.iter_generate(demographics, seed, steps, guidance, batch_size, **kwargs)]

    def __post_init__(self) -> None:
        self.to(self.device)

    def to(self, device: str | torch.device) -> "Cascade":
        """Both networks on ``device`` in channels-last 3D memory (the convolutions' fast layout on CPUs:
        stage 1 about 1.4x faster here in bf16; the values are the same up to float rounding)."""
        self.device = torch.device(device)
        for net in (self.lowres, self.sr):
            channels_last(net.to(self.device))
        return self


def check_stages_fit(lowres: StageConfig, sr: StageConfig, source: Path | str) -> None:
    """CheckpointError unless stage 1 is "lowres", stage 2 "sr", on the same canvas at half/full resolution."""
    if lowres.kind != "lowres" or sr.kind != "sr":
        raise CheckpointError(f"{source}: expected a lowres and an sr stage, found {lowres.kind} and {sr.kind}")
    if not isinstance(lowres.mirror_x, bool) or not isinstance(sr.mirror_x, bool):
        raise CheckpointError(f"{source}: mirror_x must be true or false (lowres {lowres.mirror_x!r}, sr "
                              f"{sr.mirror_x!r})")
    f = sr.sr_factor
    if tuple(f * s for s in lowres.shape) != tuple(sr.shape) or tuple(lowres.fov_mm) != tuple(sr.fov_mm):
        raise CheckpointError(f"{source}: stages do not fit together (lowres {lowres.shape} on {lowres.fov_mm} mm, "
                              f"sr {sr.shape} on {sr.fov_mm} mm; sr must be {f} times lowres on the same canvas)")
    if lowres.network.in_channels not in (lowres.network.out_channels, lowres.network.out_channels + 3):
        raise CheckpointError(f"{source}: lowres network takes {lowres.network.in_channels} channels, expected "
                              f"{lowres.network.out_channels} or {lowres.network.out_channels + 3} (with positions)")
    expected = sr_in_channels(lowres.network.out_channels, sr.lowres_noise_max > 0)
    if sr.network.in_channels != expected:
        raise CheckpointError(f"{source}: sr network takes {sr.network.in_channels} channels, expected {expected}")


def load_cascade(path: str | Path | None = None, device: str | torch.device = "cpu",
                 precision: str = "auto") -> Cascade:
    """Load a cascade folder (lowres.*, sr.*, population.json); ``None`` loads the bundled weights.

    precision: "fp32", "bf16" (autocast) or "auto" (default: bf16 where the device runs it fast, i.e. CPUs with
    AVX512-BF16/AMX and bf16 GPUs; 2.4x faster here with the same organ statistics); ValueError otherwise.

    Raises FileNotFoundError (missing files, with how to train), CheckpointError (a ValueError) for pickle
    files, non-safetensors files, architectures that differ from their config or stages that do not fit.
    """
    if path is None:
        folder = bundled_folder()
    else:
        folder = Path(path)
        if folder.suffix.lower() in PICKLE_SUFFIXES or (folder.is_file() and folder.suffix != ".safetensors"):
            check_safetensors(folder)  # raises with the reason
        if folder.is_file():
            folder = folder.parent
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such cascade folder")
    device = torch.device(device)
    precision = checked_precision(precision, device)
    lowres, lo_cfg, lo_meta = load_stage(folder / "lowres.safetensors", device)
    sr, sr_cfg, sr_meta = load_stage(folder / "sr.safetensors", device)
    check_stages_fit(lo_cfg, sr_cfg, folder)
    pop_path = folder / "population.json"
    try:
        population = PopulationModel.load(pop_path) if pop_path.is_file() else None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{pop_path}: not a readable population model ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else exc!r})") from None
    meta = {"folder": str(folder), "lowres_sha256": lo_meta.get("sha256"), "sr_sha256": sr_meta.get("sha256"),
            "lowres": lo_meta, "sr": sr_meta}
    return Cascade(lowres, lo_cfg, sr, sr_cfg, population, device, meta, precision)


def random_cascade(lowres: StageConfig, sr: StageConfig, population: PopulationModel | None = None,
                   device: str | torch.device = "cpu", seed: int = 0) -> Cascade:
    """An untrained cascade for tests and speed measurements.

    The layers that training starts from zero (output convs, FiLM) get small random weights instead, so
    that every part of the networks influences the output.
    """
    from .checkpoints import build_denoiser

    check_stages_fit(lowres, sr, "random cascade")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lo_net, sr_net = build_denoiser(lowres), build_denoiser(sr)
        for net in (lo_net, sr_net):
            for name, param in net.named_parameters():
                if torch.count_nonzero(param) == 0 and not name.endswith("null_emb"):
                    torch.nn.init.normal_(param, std=0.05)
    return Cascade(lo_net.to(device).eval(), lowres, sr_net.to(device).eval(), sr, population, device, {})

"""A compact cascaded diffusion generator of whole-body FDG PET/CT conditioned on demographics.

A library (torch only; it never imports totalgen_eval):

    from generator import load_cascade
    cascade = load_cascade()                       # bundled weights (trained on phantoms)
    cases = cascade.generate(frame, seed=0)        # [(CT HU (x,y,z), PET SUV (x,y,z), affine), ...]

Stage 1 samples a 16 mm canvas (28, 20, 72) from (age, sex, height, weight); stage 2 adds the residual
detail at 8 mm (56, 40, 144). Modules: config, networks, diffusion, sampling, intensity, stages, cascade,
training, checkpoints, population.
"""
from __future__ import annotations

from .cascade import Cascade, case_seed, load_cascade, random_cascade
from .checkpoints import CheckpointError, bundled_folder, load_stage, save_stage
from .config import NetworkConfig, ScheduleConfig, StageConfig, default_lowres, default_sr, tiny_lowres, tiny_sr
from .diffusion import Denoiser, edm_loss, karras_sigmas, precond_coefficients
from .population import PopulationModel, parse_sex
from .sampling import sample_dpmpp_2m, sample_euler, sample_heun

__all__ = ["Cascade", "CheckpointError", "Denoiser", "NetworkConfig", "PopulationModel", "ScheduleConfig",
           "StageConfig", "bundled_folder", "case_seed", "default_lowres", "default_sr", "edm_loss",
           "karras_sigmas", "load_cascade", "load_stage", "parse_sex", "precond_coefficients", "random_cascade",
           "sample_dpmpp_2m", "sample_euler", "sample_heun", "save_stage", "tiny_lowres", "tiny_sr"]

"""Training and held-out evaluation of the bundled phantom organ segmenter (a small MONAI UNet); it sits
beside the generator's training (``training_data.py``), above ``segment``, ``phantom`` and ``metrics``.

    python -m totalgen_eval.segmenter_training train --out totalgen_eval/weights/phantom_organs
    python -m totalgen_eval.segmenter_training evaluate totalgen_eval/weights/phantom_organs.json

Data: phantom cohorts from ``totalgen_eval.phantom.make_cohort`` at 8 mm (the phantom and generator grid);
training and held-out cohorts use different seeds. The network predicts the nine canonical organs (plus
background) from CT and PET; each organ is written with one representative TotalSegmentator id (see
TRAINING.md). Augmentation: extra CT noise, PET noise, Gaussian blur of both, small HU/SUV scale shifts,
random z crops. Arrays (i, j, k); tensors (B, C, X, Y, Z).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from .organs import ORGAN_NAMES, organ, organ_label_map
from .segment.model import ModelConfig, build_network, load_model, network_input, predict_labels, save_model

if TYPE_CHECKING:
    import torch

    from .cohort import Case

REPRESENTATIVE_IDS = tuple(organ(name).classes[0] for name in ORGAN_NAMES)  # 90, 10, 51, 52, 5, 1, 2, 21, 80


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training run (saved in the model's JSON under "training")."""

    out: str = "totalgen_eval/weights/phantom_organs"
    data_dir: str = "/tmp/totalgen-seg-data"
    n_train: int = 160
    n_heldout: int = 40
    train_seed: int = 101
    heldout_seed: int = 202
    seed: int = 0
    steps: int = 900
    batch_size: int = 4
    crop_z: int = 64
    lr: float = 2e-3
    channels: tuple[int, ...] = (16, 32, 64, 128)
    inputs: tuple[str, ...] = ("ct", "pet")
    threads: int = 2
    checkpoint_every: int = 100
    max_minutes: float = 30.0
    init: str = ""  # start from this checkpoint's weights (fine-tuning / a second run)


def phantom_cohort(path: Path, n: int, seed: int):
    """A phantom cohort at the default 8 mm grid (made once, then reused), loaded as a Cohort."""
    from .cohort import load_cohort
    from .phantom import make_cohort

    if not (path / "cohort.csv").is_file():
        make_cohort(path, n=n, seed=seed, progress=False)
    return load_cohort(path)


def load_arrays(cohort: Sequence[Case], inputs: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(CT HU float32 (N, X, Y, Z), PET SUV float32 (N, X, Y, Z), organ index uint8 (N, X, Y, Z))."""
    cts, pets, targets = [], [], []
    for case in cohort:
        ct, _ = case.read_ct()
        pet, _ = case.read_pet()
        labels, _ = case.read_labels()
        cts.append(ct.astype(np.float32))
        pets.append(pet.astype(np.float32))
        targets.append(organ_label_map(labels, ORGAN_NAMES))
    return np.stack(cts), np.stack(pets), np.stack(targets)


def augment(ct: np.ndarray, pet: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noisier / blurrier / slightly rescaled copies of one CT (HU) and PET (SUV) (i, j, k)."""
    from scipy import ndimage

    if rng.random() < 0.5:
        sigma = rng.uniform(0.2, 0.8)  # voxels
        ct = ndimage.gaussian_filter(ct, sigma)
        pet = ndimage.gaussian_filter(pet, sigma)
    ct = ct * rng.uniform(0.97, 1.03) + rng.uniform(-8, 8) + rng.normal(0, rng.uniform(0, 20), ct.shape)
    pet = pet * rng.uniform(0.8, 1.25) * (1 + rng.normal(0, rng.uniform(0, 0.15), pet.shape))
    return ct.astype(np.float32), np.clip(pet, 0, None).astype(np.float32)


def training_batch(ct: np.ndarray, pet: np.ndarray, target: np.ndarray, mcfg: ModelConfig, cfg: TrainConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One batch of random cases, each cropped to ``cfg.crop_z`` random slices and augmented: network input
    (B, C, X, Y, crop_z) float32 and organ index target (B, 1, X, Y, crop_z) int64."""
    xs, ys = [], []
    for i in rng.integers(0, len(ct), cfg.batch_size):
        z0 = int(rng.integers(0, ct.shape[-1] - cfg.crop_z + 1))
        c, p = augment(ct[i, ..., z0:z0 + cfg.crop_z], pet[i, ..., z0:z0 + cfg.crop_z], rng)
        xs.append(network_input(mcfg, c, p))
        ys.append(target[i, None, ..., z0:z0 + cfg.crop_z])
    return np.stack(xs), np.stack(ys).astype(np.int64)


def portable(options: dict) -> dict:
    """Training options as saved in the shipped JSON: path options (out, data_dir, init) by their last part
    only, so no machine-specific path is published."""
    return {k: Path(v).name if k in ("out", "data_dir", "init") and v else v for k, v in options.items()}


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The saved network's configuration for a training run."""
    return ModelConfig(network="UNet", network_args=dict(spatial_dims=3, in_channels=len(cfg.inputs),
                       out_channels=len(ORGAN_NAMES) + 1, channels=list(cfg.channels),
                       strides=[2] * (len(cfg.channels) - 1), num_res_units=0, norm="batch"),
                       class_ids=(0,) + REPRESENTATIVE_IDS, voxel_mm=(8.0, 8.0, 8.0), inputs=cfg.inputs,
                       roi_size=(56, 40, 144), overlap=0.25,
                       description="phantom organ segmenter (stand-in for TotalSegmentator on phantom-like "
                                   "8 mm CT+PET; organ level: one representative TotalSegmentator id per organ)",
                       training=portable(asdict(cfg)))


def train(cfg: TrainConfig) -> Path:
    """Train on a phantom cohort, checkpointing every ``checkpoint_every`` steps; returns the config path."""
    import torch
    from monai.losses import DiceCELoss

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    arrays = load_arrays(phantom_cohort(Path(cfg.data_dir) / "train", cfg.n_train, cfg.train_seed), cfg.inputs)
    mcfg = model_config(cfg)
    net = build_network(mcfg)
    if cfg.init:
        mcfg, arrays = _start_from(cfg.init, net, mcfg, arrays)
    ct, pet, target = arrays
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    started = time.perf_counter()
    net.train()
    for step in range(1, cfg.steps + 1):
        x, y = (torch.from_numpy(a) for a in training_batch(ct, pet, target, mcfg, cfg, rng))
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        sched.step()
        minutes = (time.perf_counter() - started) / 60
        if step % 10 == 0:
            with open(Path(cfg.out).with_suffix(".log"), "a") as fh:
                fh.write(f"step {step} loss {loss.item():.4f} minutes {minutes:.1f}\n")
        last = step == cfg.steps or minutes > cfg.max_minutes
        if step % cfg.checkpoint_every == 0 or last:
            _save_checkpoint(net, mcfg, cfg, step, minutes)
        if last:
            break
    return Path(cfg.out).with_suffix(".json")


def _start_from(init: str, net: torch.nn.Module, mcfg: ModelConfig, arrays: tuple[np.ndarray, ...]
                ) -> tuple[ModelConfig, tuple[np.ndarray, ...]]:
    """Load the weights of the model ``init`` into ``net``; returns the model config and the training arrays
    (CT, PET, target; (N, X, Y, Z)), both x-mirrored when those weights were trained in a mirrored frame."""
    from safetensors.torch import load_file

    from .segment.model import resolve_model_path

    init_json, init_weights = resolve_model_path(init)
    net.load_state_dict(load_file(str(init_weights)))
    if not ModelConfig.from_json(init_json).mirror_x:
        return mcfg, arrays
    return replace(mcfg, mirror_x=True), tuple(np.ascontiguousarray(a[:, ::-1]) for a in arrays)


def _save_checkpoint(net: torch.nn.Module, mcfg: ModelConfig, cfg: TrainConfig, step: int, minutes: float) -> None:
    """Save the network at ``step`` (its JSON records the steps done, those planned and the wall minutes)."""
    done = replace(cfg, steps=step)
    save_model(net.eval(), replace(mcfg, training={**portable(asdict(done)), "planned_steps": cfg.steps,
                                                    "wall_minutes": round(minutes, 1)}), cfg.out)
    net.train()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (NaN when both are empty)."""
    denom = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / denom) if denom else float("nan")


def evaluate(model_path: str | Path, cohort: Sequence[Case], device: str = "cpu") -> pd.DataFrame:
    """Per case x organ: Dice, and volume / SUVmean from predicted vs true labels (relative difference, %)."""
    from .metrics import case_metrics
    from .volumes import Grid

    net, mcfg = load_model(model_path, device)
    rows = []
    for case in cohort:
        ct, aff = case.read_ct()
        pet, _ = case.read_pet()
        truth, _ = case.read_labels()
        grid = Grid(tuple(ct.shape), aff)
        pred = predict_labels(net, mcfg, ct, grid, grid, device, pet=pet, pet_grid=grid)
        m_true = case_metrics(pet, ct, truth, grid).set_index("organ")
        m_pred = case_metrics(pet, ct, pred, grid).set_index("organ")
        t_org, p_org = organ_label_map(truth), organ_label_map(pred)
        for i, name in enumerate(ORGAN_NAMES, start=1):
            rows.append({"case_id": case.case_id, "organ": name, "dice": dice(t_org == i, p_org == i),
                         "volume_diff_pct": 100 * (m_pred.loc[name, "volume_ml"] / m_true.loc[name, "volume_ml"] - 1),
                         "suv_mean_diff_pct": 100 * (m_pred.loc[name, "suv_mean"] / m_true.loc[name, "suv_mean"] - 1)})
    return pd.DataFrame(rows)


def summarise(per_case: pd.DataFrame) -> pd.DataFrame:
    """Per organ: mean and minimum Dice, mean and max |difference| of volume and SUVmean (%)."""
    g = per_case.assign(abs_v=per_case.volume_diff_pct.abs(), abs_s=per_case.suv_mean_diff_pct.abs()).groupby(
        "organ", sort=False)
    return pd.DataFrame({"dice_mean": g.dice.mean(), "dice_min": g.dice.min(),
                         "volume_diff_mean_pct": g.volume_diff_pct.mean(), "volume_absdiff_max_pct": g.abs_v.max(),
                         "suv_mean_diff_mean_pct": g.suv_mean_diff_pct.mean(),
                         "suv_mean_absdiff_max_pct": g.abs_s.max()}).round(3)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train / evaluate the bundled phantom organ segmenter.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train")
    for f, v in asdict(TrainConfig()).items():
        if isinstance(v, tuple):
            tr.add_argument(f"--{f.replace('_', '-')}", default=",".join(map(str, v)))
        else:
            tr.add_argument(f"--{f.replace('_', '-')}", type=type(v), default=v)
    ev = sub.add_parser("evaluate")
    ev.add_argument("model")
    ev.add_argument("--data-dir", default=TrainConfig.data_dir)
    ev.add_argument("--n", type=int, default=TrainConfig.n_heldout)
    ev.add_argument("--seed", type=int, default=TrainConfig.heldout_seed)
    ev.add_argument("--csv", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "train":
        kw = vars(args).copy()
        kw.pop("cmd")
        kw["channels"] = tuple(int(c) for c in str(kw["channels"]).split(","))
        kw["inputs"] = tuple(str(kw["inputs"]).split(","))
        print(train(TrainConfig(**kw)))
    else:
        import torch
        torch.set_num_threads(2)
        cohort = phantom_cohort(Path(args.data_dir) / "heldout", args.n, args.seed)
        per_case = evaluate(args.model, cohort)
        if args.csv:
            per_case.to_csv(args.csv, index=False)
        print(summarise(per_case).to_string())
        print(json.dumps({"cases": len(cohort)}))


if __name__ == "__main__":
    main()

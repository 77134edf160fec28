"""The ``model:PATH`` backend: a MONAI 3D segmentation network from safetensors + a JSON config.

The config (``<stem>.json`` beside ``<stem>.safetensors``) names the network class (one of
``monai.networks.nets``) and its arguments, the CT normalisation (HU window -> [0, 1]), the voxel size
the network works at (mm), the TotalSegmentator class id of every output channel and the sliding-window
settings. Weights load without pickle. Input CT is resampled (linearly) to the model's voxel size when its
own differs; the argmax labels are resampled (nearest) back onto the target grid (the PET's).

``mirror_x`` (default false) marks a network trained on anatomy mirrored along world x (the patient's right
at -x in RAS+). Running it as ``flip_i(net(flip_i(input)))``, with i the array axis that held world x in its
training data, is exactly the network trained on the unmirrored data, so such a checkpoint labels correct
anatomy without retraining (see ``weights/TRAINING.md``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..provenance import atomic_path, to_jsonable
from ..volumes import Grid, resample_to_grid

FORMAT = "totalgen-eval-segmenter/1"
BUNDLED_NAME = "phantom_organs"


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to run a saved segmentation network (saved as JSON beside its weights)."""

    network: str  # a class of monai.networks.nets, e.g. "UNet"
    network_args: dict[str, Any]
    class_ids: tuple[int, ...]  # TotalSegmentator "total" id of each output channel (channel 0: background)
    voxel_mm: tuple[float, float, float] = (8.0, 8.0, 8.0)
    inputs: tuple[str, ...] = ("ct",)  # input channels: "ct" and optionally "pet"
    ct_window: tuple[float, float] = (-1000.0, 1000.0)  # HU mapped linearly to [0, 1], clipped
    pet_max_suv: float = 25.0  # SUV clipped to [0, max], then log2(SUV + 1) / log2(max + 1)
    roi_size: tuple[int, int, int] = (56, 40, 144)
    overlap: float = 0.25
    sw_batch_size: int = 1
    mirror_x: bool = False  # trained on x-mirrored anatomy: input and output are flipped along axis i
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    @classmethod
    def from_json(cls, path: Path) -> "ModelConfig":
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"unreadable model config ({exc})", path) from None
        if raw.get("format") != FORMAT:
            raise InputError(f"not a {FORMAT} config (format {raw.get('format')!r})", path)
        try:
            return cls(network=raw["network"], network_args=dict(raw["network_args"]),
                       class_ids=tuple(int(c) for c in raw["class_ids"]),
                       voxel_mm=tuple(float(v) for v in raw["voxel_mm"]),
                       inputs=tuple(str(v) for v in raw.get("inputs", ("ct",))),
                       ct_window=tuple(float(v) for v in raw["ct_window"]),
                       pet_max_suv=float(raw.get("pet_max_suv", 25.0)),
                       roi_size=tuple(int(v) for v in raw["roi_size"]), overlap=float(raw.get("overlap", 0.25)),
                       sw_batch_size=int(raw.get("sw_batch_size", 1)), mirror_x=_flag(raw.get("mirror_x", False)),
                       description=raw.get("description", ""),
                       training=dict(raw.get("training", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"model config lacks or mangles {exc}", path) from None


def _flag(value: Any) -> bool:
    """A JSON boolean; ValueError for anything else (a string "false" must not read as true)."""
    if not isinstance(value, bool):
        raise ValueError(f"mirror_x must be true or false, not {value!r}")
    return value


def bundled_model_path() -> Path:
    """The bundled phantom organ segmenter's config (``totalgen_eval/weights/phantom_organs.json``)."""
    return Path(str(files("totalgen_eval").joinpath("weights", f"{BUNDLED_NAME}.json")))


def resolve_model_path(spec_path: str | Path) -> tuple[Path, Path]:
    """(config JSON, safetensors) from a path to either file, their common stem, or a folder with one pair."""
    if str(spec_path) in ("bundled", "phantom"):
        spec_path = bundled_model_path()
    p = Path(spec_path)
    if p.is_dir():
        pairs = [j for j in sorted(p.glob("*.json")) if j.with_suffix(".safetensors").is_file()]
        if len(pairs) != 1:
            raise InputError(f"expected one <name>.json + <name>.safetensors pair, found {len(pairs)}", p)
        p = pairs[0]
    stem = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    cfg, weights = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    for f in (cfg, weights):
        if not f.is_file():
            raise InputError("model file not found", f)
    return cfg, weights


MAX_PARAMETERS = 2**28  # 1 GiB of float32 weights: far above any organ segmenter that runs on a CPU
MAX_ROI_VOXELS = 2**24  # one sliding-window patch (the bundled model's is 56 x 40 x 144 = 0.3 M)


def check_model_config(config: ModelConfig, source: str | Path | None = None) -> None:
    """InputError unless the config is safe to build: no pretrained-weight download, sizes within limits.

    Checked from the JSON alone; ``build_network`` then counts the parameters on the meta device (no memory).
    """
    for key, value in config.network_args.items():
        if "pretrain" in key.lower() and value not in (False, None, "", 0):
            raise InputError(f"network_args.{key} = {value!r} asks for pretrained weights; this tool never downloads "
                             "(ship the weights as safetensors beside the config instead)", source)
    if not 1 <= len(config.class_ids) <= 256 or any(not 0 <= c <= 255 for c in config.class_ids):
        raise InputError(f"class_ids: 1 to 256 TotalSegmentator ids in 0..255 expected, got {len(config.class_ids)}",
                         source)
    roi = np.prod([int(v) for v in config.roi_size]) if len(config.roi_size) == 3 else -1
    if not 1 <= roi <= MAX_ROI_VOXELS or min(config.roi_size) < 1:
        raise InputError(f"roi_size {config.roi_size}: three positive sizes of at most {MAX_ROI_VOXELS:,} voxels "
                         "together expected", source)
    if not 1 <= config.sw_batch_size <= 64 or not 0 <= config.overlap < 1:
        raise InputError(f"sw_batch_size {config.sw_batch_size} (1-64) or overlap {config.overlap} ([0, 1)) out of "
                         "range", source)
    if not all(np.isfinite(v) and 0.1 <= v <= 100 for v in config.voxel_mm) or not np.isfinite(config.ct_window).all() \
            or config.ct_window[0] >= config.ct_window[1] or not 0 < config.pet_max_suv < 1e4:
        raise InputError("voxel_mm (0.1-100 mm), ct_window (low < high) or pet_max_suv out of range", source)


def build_network(config: ModelConfig, source: str | Path | None = None):
    """An untrained network of the class and arguments in ``config`` (monai.networks.nets only).

    The config is checked first (``check_model_config``) and the network is built once on torch's meta device
    to count its parameters: a network above MAX_PARAMETERS is refused before any memory is allocated.
    """
    import torch
    from monai.networks import nets

    check_model_config(config, source)
    cls = getattr(nets, config.network, None)
    if cls is None or not isinstance(cls, type):
        raise InputError(f"unknown network class {config.network!r} (expected a monai.networks.nets class)", source)
    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in cls(**config.network_args).parameters())
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise InputError(f"network_args do not build a {config.network} ({str(exc).splitlines()[0]})", source) from None
    if n > MAX_PARAMETERS:
        raise InputError(f"{config.network} of {n:,} parameters exceeds the limit of {MAX_PARAMETERS:,}", source)
    return cls(**config.network_args)


def save_model(network, config: ModelConfig, stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.safetensors`` (weights) and ``<stem>.json`` (config), each atomically."""
    from safetensors.torch import save_file

    stem = Path(stem)
    weights, cfg = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp))
    with atomic_path(cfg) as tmp:
        tmp.write_text(json.dumps(to_jsonable(config), indent=2) + "\n")
    return cfg, weights


def load_model(spec_path: str | Path, device: str = "cpu"):
    """(network in eval mode on ``device``, ModelConfig) from a checkpoint; weights load without pickle."""
    from safetensors.torch import load_file

    cfg_path, weights = resolve_model_path(spec_path)
    from safetensors import SafetensorError

    config = ModelConfig.from_json(cfg_path)
    network = build_network(config, cfg_path)
    try:
        network.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        raise InputError(f"weights do not fit the configured network ({str(exc).splitlines()[0]})", weights) from None
    except SafetensorError as exc:
        raise InputError(f"corrupt or truncated safetensors file ({str(exc).splitlines()[0]})", weights) from None
    return network.to(torch_device(device)).eval(), config


def torch_device(device: str):
    """A torch.device from cpu / cuda / cuda:N / gpu; InputError when CUDA is asked for but absent."""
    import torch

    d = device.strip().lower().replace("gpu", "cuda")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA is not available on this machine", "--device")
    try:
        return torch.device(d)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}", "--device") from None


def model_grid(grid: Grid, voxel_mm: tuple[float, float, float]) -> Grid:
    """A grid over the same extent (outer box) as ``grid`` with voxels of ``voxel_mm`` (axis-aligned)."""
    spacing = np.asarray(grid.spacing_mm)
    target = np.asarray(voxel_mm, dtype=float)
    shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(grid.shape, spacing, target))
    direction = grid.affine[:3, :3] / spacing  # unit columns
    corner = grid.affine[:3, :3] @ np.full(3, -0.5) + grid.affine[:3, 3]  # outer corner of voxel 0
    affine = np.eye(4)
    affine[:3, :3] = direction * target
    affine[:3, 3] = corner + affine[:3, :3] @ np.full(3, 0.5)
    return Grid(shape, affine)


def normalise_ct(ct: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU -> [0, 1] over ``window`` (clipped), float32."""
    lo, hi = window
    return ((np.clip(ct, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def normalise_pet(pet: np.ndarray, max_suv: float) -> np.ndarray:
    """SUV -> [0, 1]: log2(clip(SUV, 0, max) + 1) / log2(max + 1), float32 (NaN -> 0)."""
    pet = np.nan_to_num(np.asarray(pet, np.float32), nan=0.0)
    return (np.log2(np.clip(pet, 0.0, max_suv) + 1.0) / np.log2(max_suv + 1.0)).astype(np.float32)


def network_input(config: ModelConfig, ct: np.ndarray, pet: np.ndarray | None = None) -> np.ndarray:
    """The (C, i, j, k) float32 input of the network from CT (HU) and PET (SUV) on the same grid."""
    channels = []
    for name in config.inputs:
        if name == "ct":
            channels.append(normalise_ct(ct, config.ct_window))
        elif name == "pet":
            if pet is None:
                raise InputError("this model needs the PET as a second input")
            channels.append(normalise_pet(pet, config.pet_max_suv))
        else:
            raise InputError(f"unknown model input {name!r} (ct, pet)")
    return np.stack(channels)


def one_window(roi_size: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether one sliding-window ROI covers a volume of ``shape`` (voxels, i j k), after MONAI's padding."""
    return len(roi_size) == len(shape) and all(n <= r for n, r in zip(shape, roi_size))


def network_logits(network, config: ModelConfig, x):
    """Logits (1, C, i, j, k) of ``network`` on ``x`` (1, C_in, i, j, k): MONAI's gaussian sliding window.

    When one ROI covers the volume, the network is called once on the input zero-padded to the ROI as MONAI
    pads it (``(roi - n) // 2`` before) and the padding is cropped off. MONAI's one window would multiply and
    divide every logit by the same gaussian weight (in full-size output and weight maps): left out, that changes
    only rounding, so the labels are the same (bar a tie within one float32 step; none in the 38.7 M voxels of
    120 phantoms).
    Runs under the caller's ``inference_mode``; 3D convolutions on the CPU run through
    ``cpu_convolution.FastCPUConvolutions`` (the same sums in another order: float32 rounding apart).
    """
    import torch
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference

    from .cpu_convolution import FastCPUConvolutions

    shape = tuple(x.shape[2:])
    with FastCPUConvolutions():
        if one_window(config.roi_size, shape):
            before = [(r - n) // 2 for r, n in zip(config.roi_size, shape)]
            pads = [v for b, r, n in zip(reversed(before), reversed(config.roi_size), reversed(shape))
                    for v in (b, r - n - b)]
            logits = network(F.pad(x, pads) if any(pads) else x)
            if isinstance(logits, torch.Tensor) and tuple(logits.shape[2:]) == tuple(config.roi_size):
                return logits[(slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(before, shape))]
        return sliding_window_inference(x, roi_size=config.roi_size, sw_batch_size=config.sw_batch_size,
                                        predictor=network, overlap=config.overlap, mode="gaussian")


def argmax_labels(logits: np.ndarray, class_ids: tuple[int, ...]) -> np.ndarray:
    """uint8 class ids (i, j, k) of the highest of the logits (C, i, j, k), the first one on a tie."""
    return np.asarray(class_ids, dtype=np.uint8)[np.argmax(logits, axis=0)]


def predict_labels(network, config: ModelConfig, ct: np.ndarray, ct_grid: Grid, target_grid: Grid | None = None,
                   device: str = "cpu", pet: np.ndarray | None = None, pet_grid: Grid | None = None) -> np.ndarray:
    """uint8 TotalSegmentator class ids on ``target_grid`` (default: the CT's) for a CT in HU (i, j, k).

    When the model also takes the PET (SUV), it is resampled (linearly) onto the model's working grid.
    A ``mirror_x`` model sees its input flipped along array axis i and its labels are flipped back: i held
    world x in its training data (the RAS+ canvas), so this is exactly the network trained on unmirrored
    anatomy, for any input (and a mirror along world x for every grid with x along i: RAS, LAS). Flipping the
    argmax labels is the same as flipping the logits first (the argmax is per voxel).
    """
    import torch

    target_grid = target_grid or ct_grid
    work = ct_grid
    if not np.allclose(ct_grid.spacing_mm, config.voxel_mm, rtol=0.02):
        work = model_grid(ct_grid, config.voxel_mm)
        ct = resample_to_grid(ct.astype(np.float32), ct_grid, work, order=1, cval=-1024.0)
    if "pet" in config.inputs and pet is not None:
        try:
            pet = resample_to_grid(np.nan_to_num(pet.astype(np.float32)), pet_grid or ct_grid, work, order=1)
        except ValueError:
            raise InputError("the CT and PET grids do not overlap") from None
    inputs = network_input(config, ct, pet)  # (C, i, j, k)
    if config.mirror_x:
        inputs = np.ascontiguousarray(inputs[:, ::-1])
    x = torch.from_numpy(inputs)[None].to(torch_device(device))
    with torch.inference_mode():
        logits = network_logits(network, config, x)[0]
        if logits.device.type == "cpu":
            labels = argmax_labels(logits.float().numpy(), config.class_ids)  # numpy's: ~5x torch's over dim 0
        else:
            labels = np.asarray(config.class_ids, dtype=np.uint8)[logits.argmax(0).cpu().numpy()]
    if config.mirror_x:
        labels = np.ascontiguousarray(labels[::-1])
    if not work.same_as(target_grid):
        try:
            labels = resample_to_grid(labels, work, target_grid, order=0)
        except ValueError:
            raise InputError("the CT and PET grids do not overlap") from None
    return labels

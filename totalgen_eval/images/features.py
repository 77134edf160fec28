"""Feature extractors for FID and MMD: the bundled segmenter's encoder, or a network the user has.

``load_extractor("bundled")`` is the encoder of the bundled phantom organ segmenter
(``totalgen_eval/weights/phantom_organs.*``, a MONAI 3D UNet trained on procedural phantoms only, see its
TRAINING.md): its features describe phantom-like 8 mm PET/CT and mean little on real scans.
``load_extractor("model:PATH")`` takes a network the user has, never downloaded:
- a MONAI network saved as ``<stem>.json`` + ``<stem>.safetensors`` (the format of ``--segmenter model:``;
  e.g. a MedicalNet ResNet re-saved that way): features are the output of its deepest layer (the leaf
  module whose output has the fewest voxels, then the most channels; the forward stops there);
- a TorchScript file (``.pt``/``.ts``, ``torch.jit.save``), 3D (N, C, x, y, z) or 2D (N, C, h, w) input with
  1, 2 (CT, PET) or 3 (a grey slice repeated, as RadImageNet models take) channels; its output is the feature
  map (or the feature vectors) used.

Each modality is fed on its own: a 1- or 3-channel network gets the scaled CT or PET, a 2-channel (CT, PET)
network gets it in its channel with the other channel empty (0: -1000 HU, SUV 0).

2.5D features (as NVIDIA MAISI): one vector per slice of each plane. A 3D network's feature map is averaged
over the two in-plane axes (a slice of the map per vector); a 2D network runs on every slice of the volume.
3D features: the feature map averaged over space (3D network), or the per-plane means concatenated (2D).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from .grids import CT_WINDOW, PET_MAX_SUV, PLANE_AXIS, PLANES, scale_modality

MODALITIES: tuple[str, ...] = ("ct", "pet")
SLICE_BATCH = 32  # slices per forward pass of a 2D network
BUNDLED_NOTE = ("bundled: encoder of the phantom organ segmenter (MONAI UNet trained on procedural phantoms only; "
                "features of phantom-like 8 mm PET/CT, not of real anatomy)")


@dataclass(frozen=True)
class FeatureExtractor:
    """A network that maps a scaled volume (or its slices) to features.

    ``run`` takes a float32 tensor (N, C, *spatial) and returns a feature map (N, F, *spatial') or
    vectors (N, F). ``spatial_dims`` 3 (volumes) or 2 (slices); ``in_channels`` 1, 2 (CT, PET) or 3.
    """

    name: str  # "bundled" or "model:PATH", as given to --features
    description: str
    run: Callable
    spatial_dims: int
    in_channels: int
    voxel_mm: tuple[float, float, float] = (8.0, 8.0, 8.0)
    ct_window: tuple[float, float] = CT_WINDOW
    pet_max_suv: float = PET_MAX_SUV
    source: Any = None  # the identity of its files and the device (``cache.file_identity``): part of cache keys


@dataclass(frozen=True)
class CaseFeatures:
    """One case's features for one modality: per plane (n_slices, F) and the 3D vector (F,)."""

    planes: dict[str, np.ndarray]
    vector: np.ndarray


class _Reached(Exception):
    """Raised by the hook on the feature layer to stop the forward pass there."""


def _leaf_outputs(network, x) -> list[tuple[object, tuple[int, ...]]]:
    """(module, output shape) of every leaf module in forward order, for one probe input."""
    import torch

    seen: list[tuple[object, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.append((mod, tuple(o.shape)))
                                     if isinstance(o, torch.Tensor) else None)
             for m in network.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            network(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def deepest_layer(network, probe) -> object:
    """The leaf module whose output has the fewest voxels (every spatial size >= 2), then the most channels,
    then comes last: a UNet's bottleneck, a ResNet's last block before pooling."""
    best, key = None, None
    for order, (module, shape) in enumerate(_leaf_outputs(network, probe)):
        spatial = shape[2:]
        if len(spatial) != probe.dim() - 2 or min(spatial) < 2:
            continue
        k = (-int(np.prod(spatial)), shape[1], order)
        if key is None or k > key:
            best, key = module, k
    if best is None:
        raise InputError("the network has no layer with a spatial feature map")
    return best


def truncated(network, layer) -> Callable:
    """A function running ``network`` up to ``layer`` and returning that layer's output."""
    import torch

    device = next(network.parameters()).device
    lock = threading.Lock()  # one pass at a time: a hook on a shared layer would fire for every thread's pass

    def run(x):
        x = x.to(device)
        store = {}

        def hook(module, inputs, output):
            store["out"] = output
            raise _Reached

        with lock:
            handle = layer.register_forward_hook(hook)
            try:
                with torch.inference_mode():
                    network(x)
            except _Reached:
                pass
            finally:
                handle.remove()
        return store["out"]

    return run


def _monai_extractor(spec: str, path: str, device: str) -> FeatureExtractor:
    """The extractor of a MONAI checkpoint: its config, weights file and device checked now, its network built
    at the first feature pass (a comparison whose features are all cached never imports torch or MONAI)."""
    from ..cache import file_identity
    from ..segment.model import ModelConfig, check_model_config, resolve_model_path

    cfg_path, weights = resolve_model_path(path)
    cfg = ModelConfig.from_json(cfg_path)
    check_model_config(cfg, cfg_path)
    check_weights_file(weights)
    if device.strip().lower() != "cpu":
        from ..segment.model import torch_device
        torch_device(device)  # CUDA asked for but absent: an error now, not after the organ metrics
    source = [[file_identity(f) for f in (cfg_path, weights)], device]
    dims = int(cfg.network_args.get("spatial_dims", 3))
    run = lazy_truncated(path, device, (1, len(cfg.inputs), *cfg.roi_size[:dims]))
    description = BUNDLED_NOTE if spec == "bundled" else f"{spec}: {cfg.network} ({cfg.description or 'user model'})"
    return FeatureExtractor(spec, description, run, dims, len(cfg.inputs), tuple(cfg.voxel_mm),
                            tuple(cfg.ct_window), float(cfg.pet_max_suv), source)


def check_weights_file(weights: Path) -> None:
    """InputError when a safetensors file is corrupt or cut short (its header read; no torch, no tensors)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="numpy") as f:
            f.keys()
    except (SafetensorError, OSError) as exc:
        raise InputError(f"corrupt or truncated safetensors file ({str(exc).splitlines()[0]})", weights) from None


def lazy_truncated(path: str, device: str, probe_shape: tuple[int, ...]) -> Callable:
    """A function like :func:`truncated` for the MONAI checkpoint at ``path`` (cut at :func:`deepest_layer`,
    found with a zero probe of ``probe_shape``), the network loaded at its first call (once, under a lock)."""
    lock = threading.Lock()
    built: list[Callable] = []

    def run(x):
        with lock:
            if not built:
                built.append(_truncated_checkpoint(path, device, probe_shape))
        return built[0](x)

    return run


def _truncated_checkpoint(path: str, device: str, probe_shape: tuple[int, ...]) -> Callable:
    import torch

    from ..segment.model import load_model

    network, _ = load_model(path, device=device)
    probe = torch.zeros(probe_shape, device=next(network.parameters()).device)
    return truncated(network, deepest_layer(network, probe))


def _torchscript_extractor(spec: str, path: Path, device: str) -> FeatureExtractor:
    import torch

    from ..cache import file_identity
    from ..segment.model import torch_device

    try:
        module = torch.jit.load(str(path), map_location=torch_device(device)).eval()
    except Exception as exc:  # not a TorchScript archive
        raise InputError(f"not a TorchScript file or a MONAI .json + .safetensors pair ({type(exc).__name__})",
                         path) from None
    for dims, channels in ((3, 1), (3, 2), (2, 3), (2, 1)):
        probe = torch.zeros((1, channels, *(32,) * dims), device=torch_device(device))
        try:
            with torch.inference_mode():
                out = module(probe)
        except Exception:
            continue
        if isinstance(out, torch.Tensor) and (out.dim() == 2 or out.dim() == dims + 2):
            if dims == 3 and out.dim() == 2:
                raise InputError("a 3D TorchScript network must return a feature map (N, C, x, y, z) for "
                                 "2.5D features, not vectors", path)
            run = _no_grad(module, probe.device)
            return FeatureExtractor(spec, f"{spec}: TorchScript {dims}D network, {channels} input channel(s)",
                                    run, dims, channels, source=[file_identity(path), device])
    raise InputError("the TorchScript network accepts none of (N, 1|2, 32, 32, 32) or (N, 1|3, 32, 32)", path)


def _no_grad(module, device) -> Callable:
    import torch

    def run(x):
        with torch.inference_mode():
            return module(x.to(device))

    return run


def load_extractor(spec: str = "bundled", device: str = "cpu") -> FeatureExtractor:
    """The extractor named by ``--features``: ``bundled`` or ``model:PATH`` (never downloads anything)."""
    spec = str(spec).strip()
    if spec in ("bundled", "model:bundled"):
        return _monai_extractor("bundled", "bundled", device)
    if not spec.startswith("model:") or len(spec) <= len("model:"):
        raise InputError(f"unknown feature extractor {spec!r}; use bundled or model:PATH", "--features")
    path = Path(spec[len("model:"):]).expanduser()
    if not path.exists() and not path.with_suffix(".json").exists():
        raise InputError("model file not found", path)
    if path.is_dir() or path.suffix in (".json", ".safetensors") or path.with_suffix(".json").is_file():
        return _monai_extractor(spec, str(path), device)
    return _torchscript_extractor(spec, path, device)


def network_input(extractor: FeatureExtractor, scaled: np.ndarray, modality: str) -> np.ndarray:
    """(C, *spatial) float32 input from one modality scaled to [0, 1] (see the module docstring)."""
    if extractor.in_channels == 2:
        out = np.zeros((2, *scaled.shape), np.float32)
        out[MODALITIES.index(modality)] = scaled
        return out
    return np.repeat(scaled[None].astype(np.float32), extractor.in_channels, axis=0)


def _as_vectors(out) -> np.ndarray:
    """(N, F) float64 from a feature map (spatial mean) or vectors."""
    x = out.float()
    if x.dim() > 2:
        x = x.mean(dim=tuple(range(2, x.dim())))
    return x.cpu().numpy().astype(np.float64)


def volume_features(extractor: FeatureExtractor, volume: np.ndarray, modality: str) -> CaseFeatures:
    """2.5D and 3D features of one modality's volume (HU or SUV) on a RAS+ grid at ``extractor.voxel_mm``."""
    import torch

    scaled = scale_modality(volume, modality, extractor.ct_window, extractor.pet_max_suv)
    x = network_input(extractor, scaled, modality)
    if extractor.spatial_dims == 3:
        return _map_features(extractor.run(torch.from_numpy(x)[None])[0])
    planes = {}
    for p in PLANES:
        slices = np.moveaxis(x, 1 + PLANE_AXIS[p], 0)  # (n, C, h, w)
        chunks = [_as_vectors(extractor.run(torch.from_numpy(np.ascontiguousarray(slices[i:i + SLICE_BATCH]))))
                  for i in range(0, len(slices), SLICE_BATCH)]
        planes[p] = np.concatenate(chunks)
    return CaseFeatures(planes, np.concatenate([planes[p].mean(axis=0) for p in PLANES]))


def _map_features(fmap) -> CaseFeatures:
    """2.5D and 3D features from one volume's feature map (F, a, b, c) of a 3D network."""
    fmap = fmap.float()
    planes = {p: fmap.mean(dim=tuple(1 + a for a in range(3) if a != PLANE_AXIS[p])).T.cpu().numpy()
              .astype(np.float64) for p in PLANES}
    return CaseFeatures(planes, fmap.mean(dim=(1, 2, 3)).cpu().numpy().astype(np.float64))


def modality_features(extractor: FeatureExtractor, volumes: dict[str, np.ndarray]) -> dict[str, CaseFeatures]:
    """:func:`volume_features` of each modality's volume (``{"ct": HU, "pet": SUV}`` on one RAS+ grid); a 3D
    network sees them as one batch: one forward pass instead of one per modality (the bundled network on 8 mm
    phantoms: 2.8x less CPU; float32 sums in another order, features within ~1e-6 relative)."""
    import torch

    shapes = {v.shape for v in volumes.values()}
    if extractor.spatial_dims != 3 or len(shapes) != 1:
        return {m: volume_features(extractor, v, m) for m, v in volumes.items()}
    x = np.stack([network_input(extractor, scale_modality(v, m, extractor.ct_window, extractor.pet_max_suv), m)
                  for m, v in volumes.items()])
    fmaps = extractor.run(torch.from_numpy(x))
    return {m: _map_features(fmaps[i]) for i, m in enumerate(volumes)}

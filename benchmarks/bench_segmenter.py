"""CPU seconds per case of the bundled segmenter (``model:bundled``) on 8 mm phantoms, against the earlier path.

    python -m benchmarks.bench_segmenter                        # 20 phantoms (seed 5), 1 thread, best of 3
    python -m benchmarks.bench_segmenter --cohort /tmp/ph --n 10 --threads 2 --json out.json

``current``: ``segment.model.predict_labels`` as it is. ``earlier``: the path it replaced, kept here to
measure against: MONAI's gaussian sliding window over the one ROI, the float logits flipped back for the
``mirror_x`` model, torch's argmax over the channel axis. Both run on the same CT and PET (read once, outside
the timing) with torch on ``--threads`` threads; each case's CPU seconds (``time.process_time``: user +
system of this process) are the best of ``--repeats``; the figures are medians over the cases. The labels of
the two are compared voxel by voxel (``voxels_differing``: over all cases).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np


def earlier_labels(network, config, ct: np.ndarray, pet: np.ndarray) -> np.ndarray:
    """uint8 class ids (i, j, k) as ``predict_labels`` computed them before (CT and PET on the model's grid)."""
    import torch
    from monai.inferers import sliding_window_inference

    from totalgen_eval.segment.model import network_input

    x = torch.from_numpy(network_input(config, ct, pet))[None]
    mirror = (2,) if config.mirror_x else ()
    with torch.inference_mode():
        logits = sliding_window_inference(x.flip(mirror) if mirror else x, roi_size=config.roi_size,
                                          sw_batch_size=config.sw_batch_size, predictor=network,
                                          overlap=config.overlap, mode="gaussian")
    if mirror:
        logits = logits.flip(mirror)
    return np.asarray(config.class_ids, dtype=np.uint8)[logits[0].argmax(0).cpu().numpy()]


def best_cpu_seconds(func: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    """(fewest CPU seconds of ``repeats`` calls, the last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        result = func()
        best = min(best, time.process_time() - start)
    return best, result


def run(cohort: Path | None = None, n: int = 20, seed: int = 5, repeats: int = 3, threads: int = 1) -> dict:
    """Median CPU seconds per case (current, earlier), their ratio and the voxels whose labels differ."""
    import torch

    from totalgen_eval import load_cohort
    from totalgen_eval.phantom import make_cohort
    from totalgen_eval.segment.model import bundled_model_path, load_model, predict_labels
    from totalgen_eval.volumes import Grid, read_volume

    torch.set_num_threads(threads)
    network, config = load_model(bundled_model_path())
    with tempfile.TemporaryDirectory(prefix="bench_segmenter_") as tmp:
        root = Path(cohort) if cohort else make_cohort(Path(tmp) / "phantoms", n=n, seed=seed, progress=False)
        cases = list(load_cohort(root))[:n]
        current, earlier, differing, voxels = [], [], 0, 0
        for case in cases:
            ct, affine = read_volume(case.ct, dtype=np.float32)
            pet, pet_affine = read_volume(case.pet, dtype=np.float32)
            grid, pet_grid = Grid(tuple(ct.shape), affine), Grid(tuple(pet.shape), pet_affine)
            if not (np.allclose(grid.spacing_mm, config.voxel_mm) and grid.same_as(pet_grid)):
                raise SystemExit(f"{case.case_id}: CT and PET on one grid of {config.voxel_mm} mm expected")
            seconds, new = best_cpu_seconds(lambda: predict_labels(network, config, ct, grid, pet_grid, pet=pet,
                                                                   pet_grid=pet_grid), repeats)
            current.append(seconds)
            seconds, old = best_cpu_seconds(lambda: earlier_labels(network, config, ct, pet), repeats)
            earlier.append(seconds)
            differing += int(np.count_nonzero(new != old))
            voxels += new.size
    now, before = statistics.median(current), statistics.median(earlier)
    return {"cases": len(cases), "threads": threads, "repeats": repeats, "shape": list(cases[0].grid().shape),
            "current_cpu_seconds_per_case": now, "earlier_cpu_seconds_per_case": before,
            "speedup": before / now, "voxels_differing": differing, "voxels": voxels}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, help="a phantom cohort folder (default: make --n phantoms)")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    res = run(args.cohort, args.n, args.seed, args.repeats, args.threads)
    text = json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return res


if __name__ == "__main__":
    main()

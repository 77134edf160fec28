"""The generator on its host: the precision chosen for the CPU, and the heap reuse while sampling."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from generator import random_cascade, tiny_lowres, tiny_sr
from generator.cascade import case_noise

from conftest import fitted_population


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_bf16_asked_for_without_bf16_units_warns_and_auto_picks_fp32(monkeypatch, fast_bf16):
    """Without bf16 units (an AVX2-only CPU) bf16 runs emulated, ~90x slower: a warning; "auto" takes fp32."""
    from generator import precision

    monkeypatch.setattr(precision, "bf16_supported", lambda device: fast_bf16)
    assert precision.checked_precision("auto", "cpu") == ("bf16" if fast_bf16 else "fp32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert precision.checked_precision("bf16", "cpu") == "bf16"
        assert precision.checked_precision("fp32", "cpu") == "fp32"
    assert [str(w.message).split(",")[0] for w in caught] == ([] if fast_bf16 else ["bf16 asked for"])


FAULTS_SCRIPT = """
import resource, torch
from generator.memory import heap_reuse
def faults(nbytes=64 << 20):  # a torch tensor: numpy asks for huge pages
    torch.ones(nbytes // 4).sum()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(nbytes // 4).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
default = faults()
with heap_reuse() as applied:
    print(default, faults(), applied)
"""


def test_heap_reuse_keeps_freed_memory_and_leaves_samples_unchanged():
    from generator.memory import glibc, heap_reuse

    if glibc() is None:
        pytest.skip("heap_reuse tunes glibc's malloc only; this C library is not glibc")
    # minor page faults of a second 64 MiB tensor after one was freed, in a fresh process (a heap grown by an
    # earlier heap_reuse serves later allocations that fit): above glibc's largest mmap threshold, so
    # mapped and faulted in afresh by default, reused inside the context
    pages = (64 << 20) // 4096
    env = {k: v for k, v in os.environ.items()  # glibc's and torch's defaults, whatever the user has set
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE", "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1], env=env).stdout.split()
    assert int(out[0]) > pages // 2 and int(out[1]) < pages // 20 and out[2] == "True"
    with heap_reuse(enabled=False) as applied:
        assert not applied
    tiny_cascade = random_cascade(tiny_lowres(), tiny_sr(), fitted_population(), seed=3)
    plan = tiny_cascade.plan(tiny_cascade.settings())
    noises = [case_noise(3, i, plan.noise_shapes) for i in range(2)]
    demo = torch.tensor([[55.0, 1.0, 1.75, 80.0], [30.0, 0.0, 1.6, 60.0]])
    plain = tiny_cascade.sample_batch(plan, noises, demo)
    with heap_reuse():
        kept = tiny_cascade.sample_batch(plan, noises, demo)
    assert all(torch.equal(a, b) for a, b in zip(plain, kept))

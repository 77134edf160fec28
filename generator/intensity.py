"""Invertible intensity maps between physical units and the network's roughly [-1, 1] space.

The paper clips CT to [-500, 500] HU and SUV to [0, 25]. Here neither is clipped:

* CT: x = asinh(HU / 200) / asinh(5). Air (-1000 HU) -> -1, +1000 HU -> +1, bone at 2000 HU -> 1.30.
  Near soft tissue the slope is 1 / 463 per HU, about the paper's 1 / 500 (its [0, 1] over 1000 HU is
  2 / 1000 in a [-1, 1] space), so soft-tissue contrast keeps the paper's resolution while bone and air
  stay representable and invertible (HU = 200 sinh(x asinh(5))). Generated CT is floored at -1024 HU
  (below air is not physical; the inverse map would amplify small errors there); there is no upper limit.
* PET: x = 2 log2(SUV + 1) / log2(26) - 1, the paper's log map without its clip: SUV 0 -> -1, 25 -> +1,
  a bladder at 40 -> 1.28. Negative SUV is not physical: SUV is floored at 0 on both sides of the map.

Arrays may be numpy or torch; channel order (CT, PET).
"""
from __future__ import annotations

import math

import torch

CT_SCALE_HU = 200.0
CT_FLOOR_HU = -1024.0
_CT_NORM = math.asinh(5.0)
_PET_NORM = math.log2(26.0)


def ct_to_unit(hu: torch.Tensor) -> torch.Tensor:
    """HU -> normalised CT (air -1, +1000 HU +1), no clipping."""
    return torch.asinh(hu / CT_SCALE_HU) / _CT_NORM


def unit_to_ct(x: torch.Tensor) -> torch.Tensor:
    """Normalised CT -> HU (inverse of ``ct_to_unit``), floored at CT_FLOOR_HU (nothing is below air)."""
    return (CT_SCALE_HU * torch.sinh(x * _CT_NORM)).clamp_min(CT_FLOOR_HU)


def pet_to_unit(suv: torch.Tensor) -> torch.Tensor:
    """SUV (g/mL) -> normalised PET (0 -> -1, 25 -> +1), no upper clip; negative SUV floored at 0."""
    return 2 * torch.log2(suv.clamp_min(0) + 1) / _PET_NORM - 1


def unit_to_pet(x: torch.Tensor) -> torch.Tensor:
    """Normalised PET -> SUV (inverse of ``pet_to_unit``), floored at 0."""
    return (torch.exp2((x + 1) / 2 * _PET_NORM) - 1).clamp_min(0)


def to_unit(ct_hu: torch.Tensor, pet_suv: torch.Tensor) -> torch.Tensor:
    """Stack (CT HU, PET SUV) volumes (..., X, Y, Z) into normalised channels (..., 2, X, Y, Z)."""
    return torch.stack([ct_to_unit(ct_hu), pet_to_unit(pet_suv)], dim=-4)


def from_unit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (..., 2, X, Y, Z) -> (CT in HU, PET in SUV), each (..., X, Y, Z)."""
    return unit_to_ct(x[..., 0, :, :, :]), unit_to_pet(x[..., 1, :, :, :])

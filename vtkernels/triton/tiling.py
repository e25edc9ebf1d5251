"""Tiles.

Extents: tl.arange needs powers of two, so a length that is not one is covered by two tiles, a
power of two plus a smaller power-of-two rest, where that computes fewer elements than rounding
the length up: 80 -> 64 + 16, 96 -> 64 + 32, 144 -> 128 + 16 (Swin's 12x12 window; rounded up it
would be 256).

Order: :func:`grouped_tile` maps a GEMM program to its output tile.

Grids: :func:`sm_count`, the SMs a launch can fill (cached: the launch heuristics ask per call).

Host arithmetic: :func:`cdiv` and :func:`next_power_of_2` are plain Python. triton.cdiv and
triton.next_power_of_2 are constexpr functions in Triton 3.6: about 2 us per host call (argument
unwrapping), several per launch.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (0 for 0, as triton.next_power_of_2)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device."""
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def grouped_tile(pid, n_m, n_n, GROUP_M: tl.constexpr):
    """Program ``pid`` -> output tile (pid_m, pid_n) of an (n_m x n_n)-tile GEMM, launched in
    groups of GROUP_M tile rows, column by column within a group: programs running together
    share their A rows and B columns in L2."""
    group_size = GROUP_M * n_n
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = min(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % rows_in_group
    pid_n = (pid % group_size) // rows_in_group
    return pid_m, pid_n


def two_tiles(n: int, floor: int = 16) -> tuple[int, int]:
    """(main, rest) covering ``n`` (``main + rest >= n``): powers of two >= ``floor``, ``rest``
    0 when one tile of ``max(floor, next_power_of_2(n))`` does as well."""
    whole = max(floor, next_power_of_2(n))
    main = max(floor, 1 << (n.bit_length() - 1)) if n > 0 else floor
    if main >= n:
        return whole, 0
    rest = max(floor, next_power_of_2(n - main))
    return (main, rest) if main + rest < whole else (whole, 0)

"""Tile extents: tl.arange needs powers of two, so a length that is not one is covered by two
tiles, a power of two plus a smaller power-of-two rest, where that computes fewer elements than
rounding the length up: 80 -> 64 + 16, 96 -> 64 + 32, 144 -> 128 + 16 (Swin's 12x12 window;
rounded up it would be 256).
"""

from __future__ import annotations

import triton


def two_tiles(n: int, floor: int = 16) -> tuple[int, int]:
    """(main, rest) covering ``n`` (``main + rest >= n``): powers of two >= ``floor``, ``rest``
    0 when one tile of ``max(floor, next_power_of_2(n))`` does as well."""
    whole = max(floor, triton.next_power_of_2(n))
    main = max(floor, 1 << (n.bit_length() - 1)) if n > 0 else floor
    if main >= n:
        return whole, 0
    rest = max(floor, triton.next_power_of_2(n - main))
    return (main, rest) if main + rest < whole else (whole, 0)

"""Seeded test inputs for the quantization fixtures, bit-identical to tests/quant_gen/mod.rs.

Both sides implement the same splitmix64 stream and build every f32 exactly (a 24-bit integer times a power of two,
or raw bits), so the fixture files need to hold only outputs. Change one side, change the other.
"""
from __future__ import annotations

import numpy as np

MASK = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed: int):
        self.state = seed & MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n

    def unit(self) -> float:
        """Uniform in [-1, 1) on a 2^-23 grid: exact in f32."""
        k = self.next() >> 40
        return (k - (1 << 23)) / (1 << 23)


def values(seed: int, n: int) -> np.ndarray:
    """n f32 (a multiple of 32), each 32-element chunk of one kind: random, all-zero, single spike, integer grid
    (exact Q4_0 rounding ties), an opposite-sign tie for the max, fp16-underflowing d, fp16-overflowing d."""
    assert n % 32 == 0
    r = SplitMix64(seed)
    out: list[float] = []
    for _ in range(n // 32):
        kind = r.below(10)
        chunk = [0.0] * 32
        if kind <= 3:
            e = r.below(31) - 20
            chunk = [r.unit() * 2.0**e for _ in range(32)]
        elif kind == 4:
            pass
        elif kind == 5:
            p = r.below(32)
            e = r.below(31) - 20
            chunk[p] = r.unit() * 2.0**e
        elif kind == 6:
            e = r.below(31) - 20
            chunk = [float(r.below(17) - 8) * 2.0**e for _ in range(32)]
        elif kind == 7:
            e = r.below(31) - 20
            chunk = [r.unit() * 2.0 ** (e - 4) for _ in range(32)]
            p = r.below(32)
            q = (p + 1 + r.below(31)) % 32
            s = 1.0 if r.next() & 1 else -1.0
            chunk[p] = s * 2.0**e
            chunk[q] = -s * 2.0**e
        elif kind == 8:
            e = -100 - r.below(20)
            chunk = [r.unit() * 2.0**e for _ in range(32)]
        else:
            e = 14 + r.below(27)
            chunk = [r.unit() * 2.0**e for _ in range(32)]
        out.extend(chunk)
    return np.array(out, dtype=np.float64).astype(np.float32)


def bits(seed: int, n: int) -> np.ndarray:
    """n raw f32 bit patterns aimed at F16/BF16 edge cases: any bits, the fp16 exponent range, exact and near
    rounding ties for fp16 and bf16, inf and NaN with payloads."""
    r = SplitMix64(seed)
    out = []
    for _ in range(n):
        kind = r.below(6)
        x = r.next() >> 32
        if kind == 1 or kind == 2 or kind == 4:
            x = (x & 0x807FFFFF) | ((100 + r.below(45)) << 23)
            if kind == 2:
                x = (x & ~0x1FFF) | 0x1000
            elif kind == 4:
                x = (x & ~0x1FFF) | (0x0FFF if r.next() & 1 else 0x1001)
        elif kind == 3:
            x = (x & ~0xFFFF) | 0x8000
        elif kind == 5:
            x = (x | 0x7F800000) & (0xFF800000 if r.below(8) == 0 else 0xFFFFFFFF)
        out.append(x & 0xFFFFFFFF)
    return np.array(out, dtype=np.uint32)

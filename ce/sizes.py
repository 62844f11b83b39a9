"""Byte counts for people: one way to write them in plans, results, errors and the CLI."""
from __future__ import annotations


def human_size(n: float) -> str:
    """1536 -> "1.5 KiB"; whole numbers stay whole ("40 GiB")."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def mib(n: int) -> str:
    """Space figures in refusals: "1,024 MiB"."""
    return f"{n / (1 << 20):,.0f} MiB"

"""Markdown tables, as ``lit-sr benchmark``, ``train``, ``compare`` and ``sweep report`` print and write them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table of ``rows`` under ``columns``; a cell is ``str(value)`` (the callers format their values)."""
    lines = [columns, ["---"] * len(columns), *rows]
    return "\n".join("| " + " | ".join(map(str, line)) + " |" for line in lines)


def psnr_ssim(result: dict[str, float] | None) -> str:
    """A benchmark cell, ``PSNR / SSIM`` (``-`` where there is no result)."""
    return f"{result['psnr_y']:.2f} / {result['ssim_y']:.4f}" if result else "-"

"""Progress bars for long library work (covariances, causal tracing, ROME): ``tqdm.auto``, on by
default where a person watches (a terminal or a notebook), silent elsewhere, off with
``show_progress=False``."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(total: int | None, desc: str, show: bool = True) -> tqdm:
    """A bar of ``total`` steps (None: unknown, a counter)."""
    return tqdm(total=total, desc=desc, disable=None if show else True, leave=False, dynamic_ncols=True)

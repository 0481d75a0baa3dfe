"""A ``transformers`` KV cache whose layers keep spare room, so a decode step writes its column in
place instead of copying the whole cache.

``DynamicLayer.update`` concatenates: every decode step allocates each layer's keys and values
anew and copies all of them, a cost that grows with rows × cache length (a quarter of a CPU decode
step at 64 rows; ``bench/overhead.py``, ``cache_*``). :class:`GrowingLayer` holds each tensor in a
buffer with room for more columns and hands the model views of the filled part; when the room runs
out the buffer grows by a quarter of its length at once (64 columns at most), so a column is copied
a few times in its life rather than once per step. Everything else (``keys``/``values`` assigned whole, cropping,
row selection, the attention and masks) behaves as for a ``DynamicLayer``, and the views are the
same numbers: logits are bit-identical to the concatenating cache's.

A batch's buffers may also keep spare rows (:meth:`GrowingLayer.stack_rows`), and newcomers are then
written into them, or into the rows of streams that ended, in place (:meth:`GrowingLayer.place_rows`):
a merge copies the newcomers' keys and values, not the whole cache.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

#: Spare columns a buffer gets when it grows: a quarter of its filled length, at least
#: ``MIN_SPARE_COLUMNS`` and at most ``MAX_SPARE_COLUMNS`` (a long batch's room costs at most that
#: many columns of memory, and a copy of the cache every that many steps).
MIN_SPARE_COLUMNS = 8
MAX_SPARE_COLUMNS = 64
SPARE_FRACTION = 4  # length // SPARE_FRACTION


class GrowingLayer(DynamicLayer):
    """One layer's keys and values ``[rows, heads, length, head dim]``, as views of buffers with
    spare columns after ``length``."""

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None) -> None:
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self._length = self._value_length = 0  # filled columns (equal between assignments of the two)
        self._rows = 0  # filled rows (the buffers may have spare rows after them)
        super().__init__()  # sets keys and values to None through the properties below
        if keys is not None and values is not None:
            self.keys, self.values = keys, values
            self.device, self.is_initialized = keys.device, True

    # Assigning a tensor (a merge, a row selection, a crop from the left) makes it the buffer,
    # with no room to spare: the next update grows it.
    @property
    def keys(self) -> torch.Tensor | None:  # type: ignore[override]
        return None if self._keys is None else self._keys[: self._rows, :, : self._length]

    @keys.setter
    def keys(self, tensor: torch.Tensor | None) -> None:
        self._keys = tensor if tensor is not None and tensor.dim() == 4 else None
        self._length = 0 if self._keys is None else self._keys.shape[-2]
        self._rows = 0 if self._keys is None else self._keys.shape[0]

    @property
    def values(self) -> torch.Tensor | None:  # type: ignore[override]
        return None if self._values is None else self._values[: self._rows, :, : self._value_length]

    @values.setter
    def values(self, tensor: torch.Tensor | None) -> None:
        self._values = tensor if tensor is not None and tensor.dim() == 4 else None
        self._value_length = 0 if self._values is None else self._values.shape[-2]

    @property
    def nbytes(self) -> int:
        """Bytes of its keys and values, spare room included."""
        return sum(t.nbytes for t in (self._keys, self._values) if t is not None)

    @property
    def row_room(self) -> int:
        """Rows its buffers hold, spare rows included."""
        return 0 if self._keys is None else self._keys.shape[0]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple:
        """Write the new columns after the filled ones (growing the buffers if they lack room);
        return the keys and values so far."""
        if not self.is_initialized:
            self.device, self.is_initialized = key_states.device, True
        new = key_states.shape[-2]
        if self._keys is None or self._values is None:
            self._rows = key_states.shape[0]
            self._keys, self._values = self._room(key_states, 0, new), self._room(value_states, 0, new)
        elif self._length + new > self._keys.shape[-2]:
            self._keys, self._values = (self._room(buffer, self._length, new) for buffer in (self._keys, self._values))
        end = self._length + new
        self._keys[: self._rows, :, self._length : end] = key_states
        self._values[: self._rows, :, self._length : end] = value_states
        self._length = self._value_length = end
        return self.keys, self.values

    def _room(self, buffer: torch.Tensor, filled: int, new: int) -> torch.Tensor:
        """A buffer like ``buffer`` (as many rows) with the first ``filled`` columns of its filled
        rows, and room for ``new`` more columns and the spare."""
        grown = _buffer(buffer, buffer.shape[0], filled + new)
        if filled:
            grown[: self._rows, :, :filled] = buffer[: self._rows, :, :filled]
        return grown

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (their spare columns too; no spare rows)."""
        if self._keys is not None and self._values is not None:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self._rows = len(indices)

    def move_rows(self, sources: torch.Tensor, targets: torch.Tensor, filled: int) -> None:
        """Copy rows ``sources`` onto rows ``targets`` in place; the filled rows are then the first
        ``filled`` (those after them become spare rows)."""
        if self._keys is not None and self._values is not None:
            if len(sources):
                for buffer in (self._keys, self._values):
                    columns = buffer[:, :, : self._length]
                    columns.index_copy_(0, targets, columns.index_select(0, sources))
            self._rows = filled

    def drop_left(self, columns: int) -> None:
        """Drop the first ``columns`` columns (no copy: the buffers' views start later)."""
        if self._keys is not None and self._values is not None:
            self._keys, self._values = self._keys[..., columns:, :], self._values[..., columns:, :]
            self._length = self._value_length = self._length - columns

    def stack_rows(self, other: GrowingLayer, width: int, spare_rows: int = 0) -> None:
        """Append ``other``'s rows after these, both right-aligned in ``width`` columns (the
        columns before a row's own are zeros, which the attention mask hides), in new buffers
        with ``spare_rows`` rows of room after them."""
        mine, theirs = (self.keys, self.values), (other.keys, other.values)
        assert mine[0] is not None and theirs[0] is not None
        filled = mine[0].shape[0] + theirs[0].shape[0]
        buffers = [_buffer(a, filled + spare_rows, width) for a in mine]
        for buffer, parts in zip(buffers, zip(mine, theirs, strict=True), strict=True):
            start = 0
            for part in parts:
                rows, pad = slice(start, start + part.shape[0]), width - part.shape[-2]
                buffer[rows, :, :pad].zero_()
                buffer[rows, :, pad:width] = part
                start += part.shape[0]
        self._keys, self._values = buffers
        self._length = self._value_length = width
        self._rows = filled

    def place_rows(self, other: GrowingLayer, rows: torch.Tensor, filled: int) -> None:
        """Write ``other``'s rows into rows ``rows`` of these buffers (filled rows, whose contents
        they replace, or spare ones), right-aligned in this layer's columns after zeros; the
        filled rows are then the first ``filled``. ``other`` is no longer than this layer and
        ``rows`` lie within its buffers (:attr:`row_room`)."""
        assert self._keys is not None and self._values is not None
        for buffer, part in ((self._keys, other.keys), (self._values, other.values)):
            assert part is not None and part.shape[-2] <= self._length
            right_aligned = F.pad(part, (0, 0, self._length - part.shape[-2], 0))
            buffer[:, :, : self._length].index_copy_(0, rows, right_aligned)
        self._rows = filled

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` columns (their room is kept for the next update)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes the negative number of columns to drop, got {tokens_to_remove}")
        self._length = self._value_length = max(0, self._length + tokens_to_remove)


def _buffer(like: torch.Tensor, rows: int, filled: int) -> torch.Tensor:
    """An uninitialised buffer for ``rows`` rows of ``filled`` columns and the spare room."""
    spare = min(MAX_SPARE_COLUMNS, max(MIN_SPARE_COLUMNS, filled // SPARE_FRACTION))
    return like.new_empty((rows, like.shape[1], filled + spare, like.shape[-1]))


class GrowingCache(DynamicCache):
    """A :class:`DynamicCache` of :class:`GrowingLayer` s: empty (layers made as the model writes
    them) or holding ``kv``, one ``(keys, values)`` per layer."""

    def __init__(self, kv: Iterable[tuple[torch.Tensor, torch.Tensor]] = ()) -> None:
        layers = [GrowingLayer(keys, values) for keys, values in kv]
        if layers:
            Cache.__init__(self, layers=layers)
        else:
            Cache.__init__(self, layer_class_to_replicate=GrowingLayer)

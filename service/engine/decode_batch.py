"""The rows a model decodes together: one left-padded KV cache, its attention mask and positions.

Rows join (a prefill of new prompts, merged into the running batch) and leave (finished or
cancelled) between forwards. Every row is left-padded to the batch's cache length; the attention
mask hides the padding and each row's ``position_ids`` count only its real tokens, so a row
computes what it would compute alone. Caches are ``transformers``' :class:`DynamicCache` (with
spare room per layer, :mod:`service.engine.growing_cache`); only their row and padding layout is managed
here, attention is the model's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from editors.surgeon import EditStack, RowStacks, Surgeon
from service.engine.growing_cache import GrowingCache
from service.engine.prefix_cache import CachedPrefix


def column_bytes(model: nn.Module) -> int:
    """Bytes of keys and values one token of one row takes in ``model``'s KV cache (every layer),
    read off the cache of a one-token forward."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        cache = model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=True).cache
    return sum(t[0, :, 0].numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


#: ``transformers``' name for torch's scaled-dot-product attention, the one implementation whose
#: masks the engine hands over in their 4D form (and the one a prefill chunk can ride with).
SDPA = "sdpa"


def step_mask(model: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """The attention mask of a decode step (one query per row) over ``mask`` ``[rows, columns]``.
    For SDPA it is handed over in its 4D form, which ``transformers`` uses as it is: built from
    the 2D mask, it first asks whether every column is real (a read back from the device, which
    waits for all the work queued, every step on a GPU)."""
    if model.config._attn_implementation == SDPA:
        return mask.bool()[:, None, None, :]
    return mask


class DecodeBatch:
    """A batch of rows with a shared KV cache. Build with :meth:`prefill`; grow with :meth:`merge`."""

    def __init__(self, cache: GrowingCache, mask: torch.Tensor, positions: torch.Tensor) -> None:
        self.cache = cache
        self.mask = mask  # [rows, cache length], 1 for real tokens
        self.positions = positions  # [rows], the position id of each row's next token

    def __len__(self) -> int:
        return self.mask.shape[0]

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    @property
    def row_room(self) -> int:
        """Rows its cache's buffers hold, spare rows included."""
        return self.cache.layers[0].row_room

    @property
    def held_bytes(self) -> int:
        """Bytes its cache's buffers take, spare room included."""
        return sum(layer.nbytes for layer in self.cache.layers)

    @classmethod
    def prefill(
        cls,
        model: nn.Module,
        surgeon: Surgeon,
        prompts: Sequence[torch.Tensor],
        stacks: Sequence[EditStack],
        pad_id: int,
    ) -> tuple[DecodeBatch, torch.Tensor]:
        """Run ``prompts`` (1-D id tensors), row ``i`` under ``stacks[i]``, in one forward; return
        the batch and the last position's logits ``[rows, vocab]``."""
        pending = Prefill(model, surgeon, prompts, stacks, pad_id)
        done = pending.advance()
        assert done is not None
        return done

    def step(self, model: nn.Module, surgeon: Surgeon, rows: RowStacks, tokens: torch.Tensor) -> torch.Tensor:
        """Feed each row its next token (``[rows]``) under ``rows`` (a :class:`RowStacks`); return the
        next logits ``[rows, vocab]``."""
        mask = torch.cat([self.mask, self.mask.new_ones((len(self), 1))], dim=1)
        try:
            with surgeon.apply_rows(rows):
                out = model(
                    input_ids=tokens.unsqueeze(1),
                    attention_mask=step_mask(model, mask),
                    position_ids=self.positions.unsqueeze(1),
                    cache=self.cache,
                    use_cache=True,
                )
        except BaseException:
            self.rewind()
            raise
        self.cache = out.cache
        self.advanced(mask)
        return out.logits[:, -1]

    def advanced(self, mask: torch.Tensor) -> None:
        """A step ran: its column is in the cache, ``mask`` covers it, positions move on."""
        self.mask, self.positions = mask, self.positions + 1

    def rewind(self) -> None:
        """After a failed step: the layers it reached appended its column; drop it (the batch stays
        as it was)."""
        self._crop_right(self.length)

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in that order) and drop the cache columns no kept row uses."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        self._drop_unused_columns()

    def compact(self, alive: Sequence[int]) -> list[int]:
        """Keep only the rows ``alive`` (ascending), in place: the live rows past the first
        ``len(alive)`` move into the rows of the others (a copy of those rows alone, where
        :meth:`keep` copies the whole cache into new buffers), and the rows after them become spare
        rows. Return the row each row held before. (The buffers keep their size: :meth:`keep`
        is the one that frees memory.)"""
        count, live = len(alive), set(alive)
        holes = [row for row in range(count) if row not in live]
        movers = [row for row in alive if row >= count]
        order = list(range(count))
        for hole, mover in zip(holes, movers, strict=True):
            order[hole] = mover
        sources = torch.tensor(movers, dtype=torch.long, device=self.mask.device)
        targets = torch.tensor(holes, dtype=torch.long, device=self.mask.device)
        for layer in self.cache.layers:
            layer.move_rows(sources, targets, count)
        self.mask, self.positions = self.mask[order], self.positions[order]  # (gathers: new tensors)
        self._drop_unused_columns()
        return order

    def merge(self, other: DecodeBatch, spare_rows: int = 0) -> None:
        """Append ``other``'s rows after this batch's, padding the shorter cache on the left: a
        copy of both caches, into buffers with room for ``spare_rows`` more rows (:meth:`place`)."""
        width = max(self.length, other.length)
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.stack_rows(theirs, width, spare_rows)
        masks = [F.pad(batch.mask, (width - batch.length, 0)) for batch in (self, other)]
        self.mask = torch.cat(masks, dim=0)
        self.positions = torch.cat([self.positions, other.positions], dim=0)

    def slots(self, other: DecodeBatch, ended: Sequence[int]) -> list[int] | None:
        """The rows :meth:`place` would write ``other``'s rows to: rows in ``ended`` (rows whose
        stream ended) first, then new rows after the last, in the cache's spare rows. None where
        it cannot: ``other``'s cache is longer than this one, or the spare rows are too few."""
        reused = list(ended[: len(other)])
        new = range(len(self), len(self) + len(other) - len(reused))
        if other.length > self.length or len(self) + len(new) > self.row_room:
            return None
        return reused + list(new)

    def place(self, other: DecodeBatch, rows: Sequence[int]) -> None:
        """Write ``other``'s rows into ``rows`` (from :meth:`slots`) in place: a copy of
        ``other``'s cache only, where :meth:`merge` copies this one's too. Columns that only the
        replaced rows used are dropped (without it, a batch that newcomers keep joining in place
        would grow a column per step for as long as it runs)."""
        filled = max(len(self), max(rows) + 1)
        index = torch.tensor(list(rows), dtype=torch.long, device=self.mask.device)
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.place_rows(theirs, index, filled)
        added = filled - len(self)  # (new tensors: a mask handed out before is left as it was)
        self.mask = torch.cat([self.mask, self.mask.new_zeros((added, self.length))])
        self.mask[index] = F.pad(other.mask, (self.length - other.length, 0))
        self.positions = torch.cat([self.positions, self.positions.new_zeros(added)])
        self.positions[index] = other.positions
        self._drop_unused_columns()

    def _drop_unused_columns(self) -> None:
        """Drop the columns on the left that no row's mask uses (no copy: views start later)."""
        first = int(self.mask.any(dim=0).int().argmax()) if len(self) else self.length
        if first:
            self._crop_left(first)

    def _crop_right(self, length: int) -> None:
        """Drop cache columns past ``length`` (those a failed step appended in some layers)."""
        for layer in self.cache.layers:
            extra = layer.get_seq_length() - length
            if extra > 0:
                layer.crop(-extra)

    def _crop_left(self, columns: int) -> None:
        for layer in self.cache.layers:
            layer.drop_left(columns)
        self.mask = self.mask[:, columns:]


class Prefill:
    """New prompts on their way into a batch, ``columns`` positions per forward (chunked prefill):
    between two chunks the scheduler runs a decode step for the rows already running, so a long
    prompt holds them up for one chunk at a time rather than for its whole prefill. Each chunk
    extends the same cache under the same attention mask and position ids, so the result is the
    one-forward prefill's (up to the order of floating-point sums).

    With ``cached`` (per row, a :class:`~service.engine.prefix_cache.CachedPrefix` or ``None``), a row's
    first tokens come as keys and values already computed: the cache starts with them,
    right-aligned, and only the rest of each prompt runs (left-padded after them: the gap is masked,
    and position ids count real tokens, so a row computes what its full prefill computes)."""

    def __init__(
        self,
        model: nn.Module,
        surgeon: Surgeon,
        prompts: Sequence[torch.Tensor],
        stacks: Sequence[EditStack],
        pad_id: int,
        columns: int | None = None,
        cached: Sequence[CachedPrefix | None] | None = None,
    ) -> None:
        self.model, self.surgeon = model, surgeon
        device = next(model.parameters()).device
        cached = cached or [None] * len(prompts)
        done = [c.length if c is not None else 0 for c in cached]
        width = max(len(p) - d for p, d in zip(prompts, done, strict=True))
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, (prompt, skip) in enumerate(zip(prompts, done, strict=True)):
            ids[row, width - len(prompt) + skip :] = prompt[skip:]
            mask[row, width - len(prompt) + skip :] = 1
        self.ids = ids.to(device)
        self.lengths, self.skipped = [len(p) for p in prompts], done
        starts = torch.tensor(done).unsqueeze(1)
        self.position_ids = (starts + mask.cumsum(-1) - 1).clamp(min=0).to(device)
        self.cache, cached_mask = _cache_of(cached, device)
        self.past = cached_mask.shape[1]  # columns of cached prefixes, before the prompts' own
        self.mask = torch.cat([cached_mask, mask.to(device)], dim=1)
        self.stacks = tuple(stacks)
        self.columns = columns or width
        self.done = 0  # columns run so far

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    @cached_property
    def rows(self) -> RowStacks:
        """Its rows' stacks, built for its first chunk run alone (a chunk riding in a decode step
        builds its own: service.engine.ragged)."""
        return self.surgeon.rows(self.stacks)

    def advance(self) -> tuple[DecodeBatch, torch.Tensor] | None:
        """Run the next chunk; after the last one, the new batch and its last position's logits
        ``[rows, vocab]``."""
        end = self.chunk_end()
        with self.surgeon.apply_rows(self.rows):
            out = self.model(
                input_ids=self.ids[:, self.done : end],
                attention_mask=self.mask[:, : self.past + end],
                position_ids=self.position_ids[:, self.done : end],
                cache=self.cache,
                use_cache=True,
                logits_to_keep=1,  # only the last position's logits: [rows, vocab] instead of [rows, width, vocab]
            )
        self.cache = out.cache
        return self.ran(end, out.logits[:, -1])

    def chunk_end(self) -> int:
        """The column the next chunk runs to."""
        return min(self.done + self.columns, self.width)

    def ran(self, end: int, logits: torch.Tensor) -> tuple[DecodeBatch, torch.Tensor] | None:
        """The columns up to ``end`` ran (their keys and values are in the cache) and ``logits``
        are the last one's: what :meth:`advance` returns."""
        self.done = end
        if end < self.width:
            return None
        return DecodeBatch(self.cache, self.mask, self.mask.sum(-1)), logits

    def rewind(self) -> None:
        """After a failed chunk: drop the columns the layers it reached appended."""
        kept = self.past + self.done
        if not kept:
            self.cache = GrowingCache()
            return
        for layer in self.cache.layers:
            if layer.get_seq_length() > kept:
                layer.crop(kept - layer.get_seq_length())

    def prompt_kv(self, spans: Sequence[tuple[int, int, int]]) -> list[torch.Tensor]:
        """Once the last chunk ran: for each ``(row, start, stop)``, the keys and values of that
        row's prompt tokens ``start..stop`` (none of them from its cached prefix) as
        :attr:`CachedPrefix.kv` holds them, ``[2 × layers, heads, tokens, head dim]`` (every layer
        of one shape, as in the GPT-2, GPT-NeoX and Llama families): views of one copy of the
        columns the spans cover (the run tokens sit side by side, the last ones last)."""
        columns = []
        for row, start, stop in spans:
            if not self.skipped[row] <= start <= stop <= self.lengths[row] or self.done < self.width:
                raise ValueError(f"tokens {start}..{stop} of row {row} were not run by this prefill")
            offset = self.past + self.width - self.lengths[row]
            columns.append((offset + start, offset + stop))
        first, last = min(a for a, _ in columns), max(b for _, b in columns)
        layers = self.cache.layers
        covered = torch.stack(
            [layer.keys[:, :, first:last] for layer in layers] + [layer.values[:, :, first:last] for layer in layers]
        )
        return [covered[:, row, :, a - first : b - first] for (row, _, _), (a, b) in zip(spans, columns, strict=True)]


def _cache_of(cached: Sequence[CachedPrefix | None], device: torch.device) -> tuple[GrowingCache, torch.Tensor]:
    """A cache holding each row's cached prefix right-aligned (empty without any), and its mask."""
    longest = max((c.length for c in cached if c is not None), default=0)
    mask = torch.zeros((len(cached), longest), dtype=torch.long, device=device)
    if not longest:
        return GrowingCache(), mask
    template = next(c for c in cached if c is not None).kv
    twice_layers, heads, _, head_dim = template.shape
    kv = template.new_zeros((twice_layers, len(cached), heads, longest, head_dim))
    for row, prefix in enumerate(cached):
        if prefix is not None:
            kv[:, row, :, longest - prefix.length :] = prefix.kv
            mask[row, longest - prefix.length :] = 1
    layers = twice_layers // 2
    return GrowingCache((kv[i], kv[layers + i]) for i in range(layers)), mask

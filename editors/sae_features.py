"""Finding SAE features by what they respond to: the features that tell two sets of texts apart
(a concept's positive and negative sentences), read at each text's last token."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from editors.batching import encode_batch
from editors.errors import InvalidEditError
from editors.sae import SparseAutoencoder
from editors.steering import last_token_activations
from editors.surgeon import Surgeon
from editors.validation import check_int


@dataclass(frozen=True)
class FeatureContrast:
    """One feature's mean activation at the last token of the positive and the negative texts."""

    feature: int
    difference: float  # positive_mean - negative_mean
    positive_mean: float
    negative_mean: float


def last_token_features(
    surgeon: Surgeon, tokenizer: PreTrainedTokenizerBase, sae: SparseAutoencoder, texts: Sequence[str]
) -> torch.Tensor:
    """``[len(texts), d_sae]``: the SAE's feature activations at each text's last token."""
    return sae.encode(last_token_activations(surgeon, tokenizer, texts, sae.site))


def contrast_features(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    sae: SparseAutoencoder,
    pairs: Sequence[tuple[str, str]],
) -> list[FeatureContrast]:
    """Every feature ranked by how much more it fires on the pairs' positive texts than on their
    negative ones (the first fires most for the positive side, the last for the negative)."""
    if not pairs:
        raise InvalidEditError("pairs", "is empty", "(positive, negative) text pairs")
    positive = last_token_features(surgeon, tokenizer, sae, [p for p, _ in pairs]).mean(dim=0)
    negative = last_token_features(surgeon, tokenizer, sae, [n for _, n in pairs]).mean(dim=0)
    difference = positive - negative
    order = difference.argsort(descending=True).tolist()
    return [FeatureContrast(i, float(difference[i]), float(positive[i]), float(negative[i])) for i in order]


@dataclass(frozen=True)
class FeatureContext:
    """A token a feature fires on, with the tokens before it."""

    text: str  # the window of tokens up to and including the token
    token: str
    activation: float


@dataclass(frozen=True)
class FeatureCard:
    """What a dashboard shows of one feature (Neuronpedia's card): how often it fires, its
    strongest contexts in a corpus, and the tokens its decoder direction raises and lowers
    directly through the unembedding."""

    feature: int
    density: float  # share of the corpus's tokens it fires on
    max_activation: float
    contexts: list[FeatureContext]
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]


@dataclass(frozen=True)
class FeatureMatch:
    """A feature whose strongest contexts fire on, or whose decoder direction promotes, a query's
    words: how many of each, out of how many looked at."""

    feature: int
    score: float  # contexts_matched / contexts + promoted_matched / promoted (0..2)
    contexts_matched: int
    contexts: int
    promoted_matched: int
    promoted: int
    tokens: list[str]  # the matching tokens, as they read


def _word(tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    """A token as a word a search compares: its text, without surrounding spaces, lower case."""
    return tokenizer.decode([token_id]).strip().lower()


class FeatureIndex:
    """Every chosen feature's strongest contexts, firing count and direct logit effects over one
    corpus, gathered in a single pass over it: the data behind a dashboard (one feature's card)
    and a search (the features matching a text). Memory holds one batch's activations plus
    ``depth`` contexts a feature."""

    def __init__(
        self,
        surgeon: Surgeon,
        tokenizer: PreTrainedTokenizerBase,
        sae: SparseAutoencoder,
        texts: Sequence[str],
        features: Sequence[int] | None = None,
        depth: int = 100,
        batch: int = 64,
        run: Callable[[Callable[[], torch.Tensor]], torch.Tensor] = lambda forward: forward(),
    ) -> None:
        """``features`` (default: all of them) over ``texts``, keeping each one's ``depth``
        strongest contexts; ``run(forward)`` runs each batch's forward (a server runs them at
        background priority, between its decode steps)."""
        check_int("depth", depth, 1, 1000)
        if not texts:
            raise InvalidEditError("texts", "is empty", "a corpus of texts")
        chosen = list(range(sae.d_sae)) if features is None else list(features)
        for feature in chosen:
            check_int("feature", feature, 0, sae.d_sae - 1)
        self.surgeon, self.tokenizer, self.sae, self.texts = surgeon, tokenizer, sae, list(texts)
        self.column = {feature: i for i, feature in enumerate(chosen)}
        self._words: dict[tuple[int, int], list[tuple[list[str], list[str]]]] = {}
        self._gather(torch.tensor(chosen, dtype=torch.long), depth, batch, run)

    @torch.inference_mode()
    def _gather(self, chosen: torch.Tensor, depth: int, batch: int, run: Callable) -> None:
        point = f"{self.sae.site}.sae.acts"
        n = len(chosen)
        # the strongest (activation, text, position) of each feature so far: one column a feature
        values = torch.zeros((0, n))
        where = torch.zeros((0, n, 2), dtype=torch.long)
        self.fired, self.seen = torch.zeros(n, dtype=torch.long), 0
        for start in range(0, len(self.texts), batch):
            encoded = encode_batch(self.tokenizer, self.texts[start : start + batch], self.surgeon.device_dtype[0])

            def forward(encoded: dict[str, torch.Tensor] = encoded) -> torch.Tensor:
                with torch.inference_mode(), self.surgeon.trace([point], saes=[self.sae]) as cache:
                    self.surgeon.model(**encoded)
                return cache[point][..., chosen.to(cache[point].device)].float().cpu()

            mask = encoded["attention_mask"].cpu()
            acts = run(forward) * mask[..., None]
            self.fired += (acts > 0).sum(dim=(0, 1))
            self.seen += int(mask.sum())
            rows, width = mask.shape
            flat = acts.reshape(rows * width, n)
            top = flat.topk(min(depth, rows * width), dim=0)
            row, position = top.indices // width, top.indices % width
            if self.tokenizer.padding_side == "left":  # a position counts from the text's first token
                position = position - (width - mask.sum(dim=1))[row]
            values = torch.cat([values, top.values])
            where = torch.cat([where, torch.stack([row + start, position], dim=-1)])
            keep = values.topk(min(depth, len(values)), dim=0).indices
            values, where = values.gather(0, keep), where.gather(0, keep[..., None].expand(-1, -1, 2))
        self.values, self.where = values, where

    def _column(self, feature: int) -> int:
        if feature not in self.column:
            raise InvalidEditError("feature", f"{feature} is not in this index", "a feature it was built over")
        return self.column[feature]

    def density(self, feature: int) -> float:
        """The share of the corpus's tokens ``feature`` fires on."""
        return round(int(self.fired[self._column(feature)]) / max(self.seen, 1), 6)

    def max_activation(self, feature: int) -> float:
        """``feature``'s strongest activation over the corpus (0 if it never fires)."""
        return max(float(self.values[0, self._column(feature)]), 0.0) if len(self.values) else 0.0

    @torch.inference_mode()
    def effects(self, feature: int) -> torch.Tensor:
        """``[vocab]``: the logits ``feature``'s decoder direction adds directly through the unembedding."""
        device = self.surgeon.device_dtype[0]
        unembed = self.surgeon.model.get_output_embeddings().weight
        return (unembed.float() @ self.sae.W_dec[feature].to(device).float()).cpu()

    def _search_words(self, contexts: int, promoted: int) -> list[tuple[list[str], list[str]]]:
        """Per indexed feature: the words its ``contexts`` strongest contexts fire on and its
        ``promoted`` most-raised tokens, as a search compares them; worked out once per replica
        and kept (the unembedding over every decoder row is the costly part)."""
        key = (contexts, promoted)
        if key not in self._words:
            check_int("contexts", contexts, 1, len(self.values) or 1)
            fired = self.values[:contexts] > 0
            read = self.where[:contexts][fired][:, 0].tolist()
            ids = {text: self.tokenizer(self.texts[text])["input_ids"] for text in read}
            raised_ids = self._promoted(promoted)
            self._words[key] = [
                (
                    [
                        _word(self.tokenizer, ids[text][position])
                        for value, (text, position) in zip(
                            self.values[:contexts, column].tolist(), self.where[:contexts, column].tolist(), strict=True
                        )
                        if value > 0
                    ],
                    [_word(self.tokenizer, t) for t in raised_ids[column].tolist()],
                )
                for column in self.column.values()
            ]
        return self._words[key]

    @torch.inference_mode()
    def _promoted(self, count: int, chunk: int = 256) -> torch.Tensor:
        """``[features, count]``: each indexed feature's most-raised token ids, the unembedding
        applied to a chunk of decoder rows at a time (never the whole features × vocabulary)."""
        check_int("promoted", count, 1, 1000)
        device = self.surgeon.device_dtype[0]
        unembed = self.surgeon.model.get_output_embeddings().weight.float()
        features = torch.tensor(list(self.column), dtype=torch.long)
        out = []
        for start in range(0, len(features), chunk):
            rows = self.sae.W_dec[features[start : start + chunk]].to(device).float()
            out.append((rows @ unembed.T).topk(count, dim=-1).indices.cpu())
        return torch.cat(out)

    def card(self, feature: int, top: int = 10, window: int = 8) -> FeatureCard:
        """``feature``'s dashboard card: its ``top`` strongest contexts (each the ``window``
        tokens up to the one it fires on), density and the tokens it most raises and lowers."""
        column = self._column(feature)
        check_int("top", top, 1, len(self.values) or 1)
        contexts = []
        strongest = zip(self.values[:top, column].tolist(), self.where[:top, column].tolist(), strict=True)
        for value, (text, position) in strongest:
            if value <= 0:
                break
            ids = self.tokenizer(self.texts[text])["input_ids"]
            contexts.append(
                FeatureContext(
                    self.tokenizer.decode(ids[max(0, position - window + 1) : position + 1]),
                    self.tokenizer.convert_ids_to_tokens(ids[position]),
                    round(value, 4),
                )
            )
        effects = self.effects(feature)
        high, low = effects.topk(top), (-effects).topk(top)
        names = self.tokenizer.convert_ids_to_tokens
        return FeatureCard(
            feature,
            self.density(feature),
            self.max_activation(feature),
            contexts,
            [(t, round(float(v), 4)) for t, v in zip(names(high.indices.tolist()), high.values, strict=True)],
            [(t, round(-float(v), 4)) for t, v in zip(names(low.indices.tolist()), low.values, strict=True)],
        )

    def search(self, query: str, top: int = 10, contexts: int = 10, promoted: int = 10) -> list[FeatureMatch]:
        """The ``top`` features that best match ``query``'s words: the share of a feature's
        ``contexts`` strongest contexts whose firing token is one of the words, plus the share of
        its ``promoted`` most-raised tokens that are (features matching neither are left out)."""
        words = {w for w in query.lower().split() if w}
        if not words:
            raise InvalidEditError("query", "has no words", "a text to match features against")
        matches = []
        for feature, (firing, raised) in zip(self.column, self._search_words(contexts, promoted), strict=True):
            hits_c, hits_p = [w for w in firing if w in words], [w for w in raised if w in words]
            if not hits_c and not hits_p:
                continue
            score = len(hits_c) / max(len(firing), 1) + len(hits_p) / promoted
            tokens = sorted(set(hits_c) | set(hits_p))
            counts = (len(hits_c), len(firing), len(hits_p), promoted)
            matches.append(FeatureMatch(feature, round(score, 6), *counts, tokens))
        return sorted(matches, key=lambda m: (-m.score, m.feature))[:top]


def feature_card(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    sae: SparseAutoencoder,
    feature: int,
    texts: Sequence[str],
    top: int = 10,
    window: int = 8,
    batch: int = 64,
    run: Callable[[Callable[[], torch.Tensor]], torch.Tensor] = lambda forward: forward(),
) -> FeatureCard:
    """``feature``'s card over ``texts`` alone (an index of that one feature)."""
    check_int("feature", feature, 0, sae.d_sae - 1)
    check_int("top", top, 1, 1000)
    index = FeatureIndex(surgeon, tokenizer, sae, texts, [feature], depth=top, batch=batch, run=run)
    return index.card(feature, top, window)

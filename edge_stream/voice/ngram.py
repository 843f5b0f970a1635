"""A word n-gram language model in the ARPA back-off format: read at run time, written by export/build_lm.py.

Why ARPA: it is the format every n-gram toolkit reads and writes (KenLM, SRILM, MITLM), so a user can
swap in an LM made elsewhere for their own phrasings. Why an n-gram at all: the recognizer's CTC
posteriors say which word each stretch of audio sounds like; the grammar says which word sequences
a command can be. A misheard word that makes no phrase of the grammar ("turn left ninety agrees")
loses to one that does when the two are scored together (edge_stream.voice.ctc_beam).

`NGramLM.logp(word, context)` is the natural-log probability of `word` after `context` (a list of
earlier words, `<s>` marking the start); `logp(EOS, context)` that the phrase ends there. A phrase's context starts as `[BOS]` (one start
symbol, as ARPA tools write it). Words
the model does not know score as its `<unk>`.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from edge_stream.errors import ConfigError

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LN10 = math.log(10.0)
FLOOR_LOG10 = -99.0  # ARPA's "never": the start symbol's own probability


class NGramLM:
    """Back-off n-gram probabilities: `probs[k]` maps (k+1)-word tuples to (log10 p, log10 back-off)."""

    def __init__(self, probs: list[dict[tuple, tuple[float, float]]]):
        if not probs or not probs[0]:
            raise ConfigError("n-gram LM: no unigrams")
        self.probs = probs
        self.order = len(probs)
        self._cache: dict[tuple, float] = {}
        unk = probs[0].get((UNK,))
        self._unk_log10 = unk[0] if unk is not None else None

    @property
    def words(self) -> set[str]:
        """The words it has unigrams for (with `<s>` and `</s>`)."""
        return {k[0] for k in self.probs[0]}

    def logp(self, word: str, context: Iterable[str]) -> float:
        """ln P(word | context): the longest known n-gram, backing off through shorter contexts."""
        ctx = tuple(context)[-(self.order - 1):] if self.order > 1 else ()
        key = ctx + (word,)
        got = self._cache.get(key)
        if got is None:
            got = self._log10(word, ctx) * LN10
            self._cache[key] = got
        return got

    def _log10(self, word: str, ctx: tuple) -> float:
        backoff = 0.0
        for start in range(len(ctx) + 1):
            c = ctx[start:]
            hit = self.probs[len(c)].get(c + (word,))
            if hit is not None:
                return backoff + hit[0]
            if c:
                bo = self.probs[len(c) - 1].get(c)
                backoff += bo[1] if bo is not None else 0.0
        if self._unk_log10 is None:
            return backoff + FLOOR_LOG10
        return backoff + self._unk_log10

    def phrase_logp(self, words: list[str]) -> float:
        """ln P of a whole phrase: every word from the start, then its end."""
        ctx = [BOS]
        total = 0.0
        for w in list(words) + [EOS]:
            total += self.logp(w, ctx)
            ctx.append(w)
        return total


def read_arpa(path: str | Path) -> NGramLM:
    """Read an ARPA file (plain text; `\\data\\`, `\\N-grams:` sections, `\\end\\`)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"n-gram LM {path}: {e}") from e
    probs: list[dict] = []
    counts: list[int] = []
    order = 0
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        if line == "\\data\\" or line == "\\end\\":
            order = 0
            continue
        if line.startswith("ngram ") and order == 0:
            counts.append(int(line.split("=")[1]))
            continue
        if line.startswith("\\") and line.endswith("-grams:"):
            order = int(line[1:line.index("-")])
            while len(probs) < order:
                probs.append({})
            continue
        if order == 0:
            raise ConfigError(f"n-gram LM {path}:{n}: expected an ARPA section, got {line[:60]!r}")
        parts = line.split()
        if len(parts) not in (order + 1, order + 2):
            raise ConfigError(f"n-gram LM {path}:{n}: a {order}-gram line needs log10 p, {order} words and "
                              f"an optional back-off, got {line[:60]!r}")
        try:
            p = float(parts[0])
            bo = float(parts[order + 1]) if len(parts) == order + 2 else 0.0
        except ValueError as e:
            raise ConfigError(f"n-gram LM {path}:{n}: {e}") from e
        probs[order - 1][tuple(parts[1:order + 1])] = (p, bo)
    got = [len(p) for p in probs]
    if got != counts:
        raise ConfigError(f"n-gram LM {path}: the header says {counts} n-grams per order, the file has {got}")
    return NGramLM(probs)


def witten_bell(sentences: Iterable[list[str]], vocabulary: Iterable[str], order: int = 3) -> NGramLM:
    """Estimate an interpolated Witten-Bell n-gram from word lists, as back-off probabilities.

    Interpolated: P(w|h) = l(h) ML(w|h) + (1 - l(h)) P(w|h'), l(h) = c(h) / (c(h) + types(h)), down to a
    uniform distribution over `vocabulary` + `</s>`. In back-off form a seen n-gram keeps its
    interpolated probability and a context's back-off weight is 1 - l(h), which makes every
    context's distribution sum to one (the unseen words' share is exactly (1 - l(h)) times theirs
    under the shorter context)."""
    if order < 1:
        raise ValueError(f"order must be at least 1, got {order}")
    vocab = sorted(set(vocabulary) - {BOS, EOS}) + [EOS]
    counts = [defaultdict(Counter) for _ in range(order)]  # k -> context (k words) -> next word -> count
    for s in sentences:
        w = [BOS] + list(s) + [EOS]  # one start symbol, as ARPA tools do: the first word's context is (<s>,)
        for i in range(1, len(w)):
            for k in range(min(order, i + 1)):
                counts[k][tuple(w[i - k:i])][w[i]] += 1

    def lam(k: int, ctx: tuple) -> float:
        c = counts[k].get(ctx)
        if not c:
            return 0.0
        total = sum(c.values())
        return total / (total + len(c))

    def prob(word: str, ctx: tuple) -> float:
        p = 1.0 / len(vocab)
        for k in range(len(ctx) + 1):
            c = ctx[len(ctx) - k:]
            cnt = counts[k].get(c)
            if cnt:
                lk = lam(k, c)
                p = lk * cnt[word] / sum(cnt.values()) + (1 - lk) * p
        return p

    probs: list[dict] = [dict() for _ in range(order)]
    for w in vocab:
        probs[0][(w,)] = (math.log10(prob(w, ())), 0.0)
    probs[0][(BOS,)] = (FLOOR_LOG10, 0.0)
    for k in range(1, order):
        for ctx, nxt in counts[k].items():
            for w in nxt:
                probs[k][ctx + (w,)] = (math.log10(prob(w, ctx)), 0.0)
    for k in range(1, order):  # back-off weights sit on the context's own entry (one order lower)
        for ctx in counts[k]:  # every context was itself counted as an n-gram (or is <s>)
            p, _ = probs[k - 1][ctx]
            probs[k - 1][ctx] = (p, math.log10(max(1e-12, 1.0 - lam(k, ctx))))
    return NGramLM(probs)


def write_arpa(lm: NGramLM, path: str | Path) -> Path:
    """Write `lm` as an ARPA file (n-grams sorted, probabilities to 6 decimals)."""
    path = Path(path)
    out = ["\\data\\"] + [f"ngram {k + 1}={len(p)}" for k, p in enumerate(lm.probs)] + [""]
    for k, table in enumerate(lm.probs):
        out.append(f"\\{k + 1}-grams:")
        last = k == lm.order - 1
        for gram in sorted(table):
            p, bo = table[gram]
            out.append(f"{p:.6f}\t{' '.join(gram)}" + ("" if last or bo == 0.0 else f"\t{bo:.6f}"))
        out.append("")
    out.append("\\end\\")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path

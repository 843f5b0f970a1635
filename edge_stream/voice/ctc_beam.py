"""CTC prefix beam search over word labels with an n-gram LM, and n-best rescoring by several recognizers.

Why: greedy CTC takes each frame's best label on its own, so a word whose spike never beats the
blank is lost and a word that sounds like another is taken as it sounds. The grammar knows which
word sequences a command can be (edge_stream.voice.ngram); scored together with the CTC posteriors,
"turn left ninety degrees" wins over "turn left ninety agrees", and a word heard faintly between
two that need it comes back. Measured on the voice report's speech: docs/voice_commands.md,
"Grammar-aware decoding".

- `BeamDecoder`: streaming prefix beam search (Graves 2012; Hannun et al. 2014) over per-frame
  log-probs, block by block; every hypothesis's score is log P_ctc(words | frames) + lm_weight *
  ln P_lm(words) + word_bonus * len(words). `finish()` adds the end of the phrase's LM probability
  and returns the hypotheses, best first.
- `ctc_log_likelihoods`: log P_ctc(words | frames) of given word sequences (the forward algorithm,
  all hypotheses at once), so hypotheses found by one recognizer can be scored by another.
- `rescore`: the union of several recognizers' hypotheses scored by all of them and the LM, with
  the posterior of each (a softmax of the scores over the list).
- `nbest`: what the recognizer route sends: the rescored list with one posterior per recognizer,
  the parser's confidence in a command being the least of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_stream.errors import ConfigError, InputError
from edge_stream.voice.ngram import BOS, EOS, NGramLM

NEG = -1e30  # log of zero that stays finite in logaddexp


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Rows of logits (or log-probs) as log-probs."""
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


@dataclass(frozen=True)
class Hypothesis:
    """A word sequence and its score (log domain; `posterior` after `rescore`)."""

    words: tuple[str, ...]
    score: float
    posterior: float = 0.0


class BeamDecoder:
    """Streaming CTC prefix beam search over word labels, scored with an n-gram LM (shallow fusion).

    `update(logprobs)` takes the next frames ([n, vocab] logits or log-probs), `finish()` the
    hypotheses at the end, best first. Per frame only the `top_k` most probable labels (and blank)
    above `prune` (log-prob) extend a hypothesis; `beam` hypotheses survive each frame."""

    def __init__(self, symbols: Sequence[str], blank: int, lm: NGramLM | None, lm_weight: float = 0.8,
                 word_bonus: float = 2.5, beam: int = 8, top_k: int = 8, prune: float = -12.0):
        if beam < 1 or top_k < 1:
            raise ConfigError(f"beam search: beam and top_k must be at least 1, got {beam}, {top_k}")
        if lm_weight < 0:
            raise ConfigError(f"beam search: lm_weight must be >= 0, got {lm_weight}")
        self.symbols, self.blank, self.lm = list(symbols), blank, lm
        self.lm_weight, self.word_bonus, self.beam, self.top_k, self.prune = lm_weight, word_bonus, beam, top_k, prune
        self.reset()

    def reset(self) -> None:
        """A new phrase: one empty hypothesis."""
        self._beams: dict[tuple, tuple[float, float]] = {(): (0.0, NEG)}  # label ids -> (ln p ends in blank, in label)
        self._prior: dict[tuple, float] = {(): 0.0}  # label ids -> lm_weight * ln P_lm + word_bonus * words

    def _step_prior(self, prefix: tuple, label: int) -> float:
        """What appending `label` to `prefix` adds to the prior: the LM's weighted word score and the bonus."""
        if self.lm is None:
            return self.word_bonus
        context = [BOS] + [self.symbols[i] for i in prefix[-(self.lm.order - 1):]] if self.lm.order > 1 else []
        return self.lm_weight * self.lm.logp(self.symbols[label], context) + self.word_bonus

    def update(self, logprobs: np.ndarray) -> None:
        """Advance every hypothesis by the frames of `logprobs` ([n_frames, vocab])."""
        if logprobs.ndim != 2 or logprobs.shape[1] != len(self.symbols):
            raise InputError(f"beam search: frames have shape {list(logprobs.shape)}, expected [n, {len(self.symbols)}]")
        lp = log_softmax(logprobs)
        k = min(self.top_k, lp.shape[1])
        tops = np.argpartition(-lp, k - 1, axis=1)[:, :k]  # [n_frames, k]
        beams, prior, blank = self._beams, self._prior, self.blank
        for t in range(lp.shape[0]):
            row = lp[t]
            labels = [int(c) for c in tops[t] if c != blank and row[c] > self.prune]
            p_blank = float(row[blank])
            new: dict[tuple, list[float]] = {}
            for prefix, (pb, pnb) in beams.items():
                total = np.logaddexp(pb, pnb)
                e = new.setdefault(prefix, [NEG, NEG])
                e[0] = np.logaddexp(e[0], total + p_blank)
                last = prefix[-1] if prefix else -1
                for c in labels:
                    p = float(row[c])
                    longer = prefix + (c,)
                    if longer not in prior:
                        prior[longer] = prior[prefix] + self._step_prior(prefix, c)
                    if c == last:  # a repeat stays the same word; a new one needs a blank between
                        e[1] = np.logaddexp(e[1], pnb + p)
                        f = new.setdefault(longer, [NEG, NEG])
                        f[1] = np.logaddexp(f[1], pb + p)
                    else:
                        f = new.setdefault(longer, [NEG, NEG])
                        f[1] = np.logaddexp(f[1], total + p)
            ranked = sorted(new.items(), key=lambda kv: -(np.logaddexp(kv[1][0], kv[1][1]) + prior[kv[0]]))
            beams = {p: (v[0], v[1]) for p, v in ranked[:self.beam]}
            if len(prior) > 64 * self.beam * max(1, k):  # keep the priors to the live hypotheses
                prior = {p: prior[p] for p in beams}
        self._beams, self._prior = beams, prior

    def finish(self) -> list[Hypothesis]:
        """The hypotheses, best first, each scored with the LM's end of phrase."""
        out = []
        for prefix, (pb, pnb) in self._beams.items():
            words = tuple(self.symbols[i] for i in prefix)
            end = self.lm.logp(EOS, [BOS, *words]) if self.lm is not None else 0.0
            out.append(Hypothesis(words, float(np.logaddexp(pb, pnb) + self._prior[prefix] + self.lm_weight * end)))
        return sorted(out, key=lambda h: -h.score)


def ctc_log_likelihoods(logprobs: np.ndarray, hyps: Sequence[Sequence[int]], blank: int) -> np.ndarray:
    """ln P_ctc(labels | frames) for each label sequence of `hyps` over `logprobs` ([T, vocab]
    log-probs): the CTC forward algorithm, every hypothesis at once. A sequence that cannot fit in
    T frames (it needs a frame per label and a blank between repeats) scores NEG."""
    T = logprobs.shape[0]
    n = len(hyps)
    if n == 0:
        return np.zeros(0)
    L = 2 * max((len(h) for h in hyps), default=0) + 1
    ext = np.full((n, L), blank, np.int64)  # blank, y1, blank, y2, ..., blank; padded with blanks
    lengths = np.array([2 * len(h) + 1 for h in hyps])
    for i, h in enumerate(hyps):
        ext[i, 1:2 * len(h):2] = h
    skip = np.zeros((n, L), bool)  # a label may follow the previous label directly when they differ
    skip[:, 3::2] = ext[:, 3::2] != ext[:, 1:-2:2]
    valid = np.arange(L)[None, :] < lengths[:, None]
    rows = np.arange(n)[:, None]
    if T == 0:
        return np.where(lengths == 1, 0.0, NEG)
    a = np.full((n, L), NEG)
    emit = logprobs[0][ext]  # [n, L]
    a[:, 0] = emit[:, 0]
    if L > 1:
        a[:, 1] = np.where(lengths > 1, emit[:, 1], NEG)
    a = np.where(valid, a, NEG)
    for t in range(1, T):
        s1 = np.concatenate([np.full((n, 1), NEG), a[:, :-1]], axis=1)
        s2 = np.concatenate([np.full((n, 2), NEG), a[:, :-2]], axis=1)[:, :L]
        a = np.logaddexp(np.logaddexp(a, s1), np.where(skip, s2, NEG)) + logprobs[t][ext]
        a = np.where(valid, a, NEG)
    last = a[rows[:, 0], lengths - 1]
    before = np.where(lengths > 1, a[rows[:, 0], np.maximum(lengths - 2, 0)], NEG)
    out = np.logaddexp(last, before)
    return np.where(out < NEG / 2, NEG, out)


def _ctc_scores(recognizers: Sequence[tuple[np.ndarray, Sequence[str], int]], cands: list[tuple]) -> np.ndarray:
    """[recognizers, candidates] ln P_ctc of each word sequence under each recognizer ((log-probs, labels,
    blank) each); a word a recognizer has no label for makes the sequence impossible (NEG) for it."""
    out = np.zeros((len(recognizers), len(cands)))
    for k, (logprobs, labels, blank) in enumerate(recognizers):
        index = {w: i for i, w in enumerate(labels)}
        ok = [all(w in index for w in c) for c in cands]
        ids = [[index[w] for w in c] if good else [] for c, good in zip(cands, ok)]
        out[k] = np.where(ok, ctc_log_likelihoods(logprobs, ids, blank), NEG)
    return out


def _priors(cands: list[tuple], lm: NGramLM | None, lm_weight: float, word_bonus: float) -> np.ndarray:
    """lm_weight * ln P_lm (with the end of phrase) + word_bonus * words, per candidate."""
    return np.array([(lm_weight * lm.phrase_logp(list(c)) if lm is not None else 0.0) + word_bonus * len(c)
                     for c in cands])


def _softmax(scores: np.ndarray) -> np.ndarray:
    z = np.exp(scores - scores.max())
    return z / z.sum()


def rescore(recognizers: Sequence[tuple[np.ndarray, Sequence[str], int, float]], candidates,
            lm: NGramLM | None, lm_weight: float, word_bonus: float) -> list[Hypothesis]:
    """Score every word sequence of `candidates` by all `recognizers` and the LM, best first.

    recognizers: (log-probs [T, vocab] of the phrase, its labels, its blank id, weight) each;
    score = sum of weight * ln P_ctc + lm_weight * ln P_lm (with the end of phrase) + word_bonus *
    words. A word a recognizer has no label for makes the sequence impossible for it. `posterior`:
    a softmax of the scores over the candidates (how sure the recognizers and the grammar are of
    this reading against the others they found)."""
    cands = list(dict.fromkeys(tuple(c) for c in candidates))
    if not cands:
        return []
    ll = _ctc_scores([(log_softmax(f), labels, blank) for f, labels, blank, _ in recognizers], cands)
    weights = np.array([w for *_, w in recognizers])[:, None]
    scores = (weights * ll).sum(axis=0) + _priors(cands, lm, lm_weight, word_bonus)
    post = _softmax(scores)
    order = np.argsort(-scores, kind="stable")
    return [Hypothesis(cands[i], float(scores[i]), float(post[i])) for i in order]


def variants(words: Sequence[str], phrases: Sequence[Sequence[str]], positions: int = 4) -> list[tuple]:
    """`words` with each of `phrases` put in at each of its first `positions` places (and at its end):
    inserted before the word there, in place of it, and (a phrase of several words) in place of as
    many words ("could you go" -> "did you go")."""
    words = tuple(words)
    out = []
    for phrase in phrases:
        phrase = tuple(phrase)
        for i in list(range(min(len(words), positions) + 1)) + [len(words)]:
            out.append(words[:i] + phrase + words[i:])
            for n in sorted({1, len(phrase)}):
                if i + n <= len(words):
                    out.append(words[:i] + phrase + words[i + n:])
    return list(dict.fromkeys(out))


def nbest(recognizers: Sequence[tuple[np.ndarray, Sequence[str], int]], candidates, lm: NGramLM | None,
          lm_weight: float, word_bonus: float, min_posterior: float = 1e-4, limit: int = 16,
          challenges: Sequence[Sequence[str]] = ()) -> list[dict]:
    """What a recognizer route sends at a segment's end: `candidates` (each recognizer's beam search and
    greedy words) scored by all `recognizers` ((log-probs, labels, blank) each, weight 1) and the LM,
    best first, as {"words", "posteriors"}: one posterior per recognizer, its own CTC score with the
    LM over the same list (how likely that recognizer finds this reading against the others). Why
    one per recognizer: a reading both find likely is one neither misheard alone; the parser's
    confidence in a command is the least of them. Entries below `min_posterior` under every
    recognizer are left out (the best always stays), at most `limit`.

    `challenges`: phrases that would change what the best reading means ("don't", "did you"): the
    best reading with each put in (`variants`) is scored too, so a word neither search kept but the
    audio supports ("so don't go" heard as "go go") takes its share of the posterior instead of
    leaving the best reading sure of itself."""
    recs = [(log_softmax(frames), labels, blank) for frames, labels, blank in recognizers]
    cands = list(dict.fromkeys(tuple(c) for c in candidates))
    if not cands:
        return []
    ll = _ctc_scores(recs, cands)  # every CTC forward once: the fused list and each recognizer's reuse it
    prior = _priors(cands, lm, lm_weight, word_bonus)
    if challenges:
        seen = set(cands)
        more = [v for v in variants(cands[int(np.argmax(ll.sum(axis=0) + prior))], challenges) if v not in seen]
        cands += more
        ll = np.concatenate([ll, _ctc_scores(recs, more)], axis=1)
        prior = np.concatenate([prior, _priors(more, lm, lm_weight, word_bonus)])
    order = np.argsort(-(ll.sum(axis=0) + prior), kind="stable")
    each = np.stack([_softmax(row + prior) for row in ll])  # [recognizers, candidates]
    out = [{"words": list(cands[i]), "posteriors": [round(float(p), 6) for p in each[:, i]]} for i in order]
    kept = [e for e in out if max(e["posteriors"]) >= min_posterior] or out[:1]
    return kept[:limit]

"""Metrics, each as its field computes it.

- classification: top-k accuracy and balanced accuracy (clip_benchmark's `mean_per_class_recall`,
  sklearn's `balanced_accuracy_score`);
- retrieval: Recall@k both ways, with several correct items per query (CLIP benchmark style);
- MMEB: Precision@1 with the gold candidate at index 0;
- VQA: exact match, and accuracy after the VQA answer normalisation (case, punctuation, articles,
  number words);
- captioning: corpus BLEU (sacrebleu) and CIDEr-D (pycocoevalcap's scorer on our tokenisation,
  since its PTB tokenizer needs Java).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def topk_correct(logits: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """[N] bool: the target is among the k highest logits of its row."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == target[:, None]).any(1)


def balanced_accuracy(target: Sequence[int], pred: Sequence[int]) -> float:
    """Mean recall over the classes present in `target` (sklearn's balanced_accuracy_score)."""
    t, p = np.asarray(target), np.asarray(pred)
    classes = np.unique(t)
    return float(np.mean([(p[t == c] == c).mean() for c in classes])) if len(classes) else float("nan")


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, torch.Tensor]:
    """scores [Q, C], positives [Q, C] bool -> per-query hit [Q] for each k (any positive in the top k)."""
    out = {}
    order = scores.argsort(dim=1, descending=True)
    ranked_pos = torch.gather(positives, 1, order)                 # [Q, C]
    for k in ks:
        out[k] = ranked_pos[:, :min(k, scores.shape[1])].any(1)
    return out


def precision_at_1(scores: Sequence[Sequence[float]] | torch.Tensor) -> list[bool]:
    """MMEB: each row scores one query's candidates with the gold at index 0; a hit when index 0 wins
    (ties go against the gold: argmax must be 0 and strictly above every other candidate, so a model that
    embeds every input alike scores 0, not 1; copies of the gold's own input are left out beforehand,
    `benchmarks.tasks.mmeb.without_gold_copies`)."""
    hits = []
    for row in scores:
        r = torch.as_tensor(row, dtype=torch.float64)
        hits.append(bool(r.numel() > 0 and (r.numel() == 1 or r[0] > r[1:].max())))
    return hits


# ---------------------------------------------------------------------------------------------- VQA
_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$|~:']")
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
_ARTICLES = {"a", "an", "the"}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "whats": "what's", "thats": "that's"}


def normalise_answer(s: str) -> str:
    """The VQA evaluation's answer normalisation: lower case, punctuation, articles, number words."""
    s = s.replace("\n", " ").replace("\t", " ").strip().lower()
    s = _PERIOD.sub("", _PUNCT.sub(" ", s))
    words = [_NUMBERS.get(w, w) for w in s.split() if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def exact_match(pred: str, gold: str) -> bool:
    return pred.strip().lower() == gold.strip().lower()


def vqa_match(pred: str, golds: str | Sequence[str]) -> bool:
    """Normalised accuracy: the normalised prediction equals one normalised gold answer."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    p = normalise_answer(pred)
    return any(p == normalise_answer(g) for g in golds)


# ---------------------------------------------------------------------------------------------- captions
def _caption_tokens(s: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", s.lower()))


def bleu(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (sacrebleu, 13a tokenisation), 0..100; refs[i] are the references of preds[i]."""
    import sacrebleu
    n = max(len(r) for r in refs)
    streams = [[r[j] if j < len(r) else "" for r in refs] for j in range(n)]
    return float(sacrebleu.corpus_bleu(list(preds), streams).score)


def rouge_l(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """ROUGE-L F (pycocoevalcap, beta 1.2) on the same tokens: (mean over captions, per-caption scores)."""
    from pycocoevalcap.rouge.rouge import Rouge
    gts = {i: [_caption_tokens(x) for x in r] for i, r in enumerate(refs)}
    res = {i: [_caption_tokens(p)] for i, p in enumerate(preds)}
    score, per = Rouge().compute_score(gts, res)
    return float(score), [float(x) for x in per]


def cider(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """CIDEr-D (pycocoevalcap) on lower-cased alphanumeric tokens: (corpus score, per-caption scores)."""
    from pycocoevalcap.cider.cider import Cider
    gts = {i: [_caption_tokens(x) for x in r] for i, r in enumerate(refs)}
    res = {i: [_caption_tokens(p)] for i, p in enumerate(preds)}
    score, per = Cider().compute_score(gts, res)
    return float(score), [float(x) for x in per]


def skipped_items(metrics: dict[str, Any]) -> dict[str, int]:
    """A result's unreadable items by reason, from its `skipped_<reason>` metrics: items its score does not
    cover."""
    return {k[len("skipped_"):]: int(v) for k, v in sorted(metrics.items()) if k.startswith("skipped_") and v}

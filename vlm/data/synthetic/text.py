"""synthetic-world text: questions a small language model can learn before it sees any media.

    vlm data build synthetic-world --out data/sw-text --tasks text     # these tasks alone (opt-in)

Four tasks, each a one-turn question with a closed answer set (`choices`: chance is 1 / len(choices)):
  text_fact    the world's facts: the colour of each of its things ("What color is the frog?" -> "green").
               The facts are fixed (`FACTS`), the same in every build and split, as facts about the real
               world are: held-out questions ask what pretraining should have taught (closed-book QA).
  text_arith   addition and subtraction of small numbers in words ("What is three plus four?" -> "seven"),
               every result between zero and nine.
  text_count   how often a word occurs in a list of 3-8 words ("How many times does 'red' appear in: red
               blue red star?" -> "two").
  text_order   the first or the last word of a list of 3-6 distinct words (word order; choices: the list).
Difficulty grows with the numbers and the list length; val / test samples are new draws, but the spaces
are small: there are 110 sums and differences, so at a few thousand training samples nearly every arithmetic
question of val / test is a training question too (what it measures is whether the facts of single-digit
arithmetic were learned, as text_fact measures the world's facts), and a few count and order lists repeat
(about 10 % and 4 % at 8,000 training samples). `vlm data build` prints how many per task and records them
in index.json (`seen_in_train`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vlm.data.synthetic.common import COLOR_NAMES, NUMBER_WORDS, SHAPES, pick, qa_json

# The world's things and their colours (every colour used; fixed, never drawn).
FACTS: dict[str, str] = {
    "cat": "orange", "dog": "purple", "sun": "yellow", "tree": "green", "book": "blue", "fish": "red",
    "bird": "blue", "car": "red", "moon": "yellow", "milk": "purple", "door": "orange", "hat": "green",
    "cup": "red", "box": "orange", "key": "yellow", "rain": "blue", "ship": "purple", "lamp": "green",
    "frog": "green", "coin": "yellow",
}
ARITH_CHOICES = NUMBER_WORDS                         # results 0-9
COUNT_CHOICES = NUMBER_WORDS[1:9]                    # one .. eight
LIST_WORDS = COLOR_NAMES + SHAPES + ["cat", "dog", "sun", "tree"]   # the words lists are made of

_FACT_QUESTIONS = ["What color is the {t}?", "Which color is the {t}?", "What is the color of the {t}?"]


def gen_text_fact(rng: np.random.Generator, split: str) -> dict[str, Any]:
    thing = pick(rng, sorted(FACTS))
    q = pick(rng, _FACT_QUESTIONS).format(t=thing)
    return {"json": qa_json("text_fact", q, FACTS[thing], COLOR_NAMES, {"thing": thing}, 0.2)}


def gen_text_arith(rng: np.random.Generator, split: str) -> dict[str, Any]:
    if rng.random() < 0.5:
        x = int(rng.integers(0, 10))
        y = int(rng.integers(0, 10 - x))
        op, result = "plus", x + y
    else:
        x = int(rng.integers(0, 10))
        y = int(rng.integers(0, x + 1))
        op, result = "minus", x - y
    q = f"What is {NUMBER_WORDS[x]} {op} {NUMBER_WORDS[y]}?"
    return {"json": qa_json("text_arith", q, NUMBER_WORDS[result], ARITH_CHOICES,
                            {"x": x, "y": y, "op": op, "result": result}, 0.1 + 0.08 * max(x, y))}


def gen_text_count(rng: np.random.Generator, split: str) -> dict[str, Any]:
    n = int(rng.integers(3, 9))
    target = pick(rng, LIST_WORDS)
    k = int(rng.integers(1, n + 1))
    others = [w for w in LIST_WORDS if w != target]
    words = [target] * k + pick(rng, others, n - k, replace=True)
    words = [words[int(i)] for i in rng.permutation(n)]
    q = f"How many times does '{target}' appear in: {' '.join(words)}?"
    return {"json": qa_json("text_count", q, NUMBER_WORDS[k], COUNT_CHOICES,
                            {"words": words, "target": target, "count": k}, 0.1 * (n - 2))}


def gen_text_order(rng: np.random.Generator, split: str) -> dict[str, Any]:
    n = int(rng.integers(3, 7))
    words = pick(rng, LIST_WORDS, n)
    which = "first" if rng.random() < 0.5 else "last"
    answer = words[0] if which == "first" else words[-1]
    q = f"What is the {which} word of: {' '.join(words)}?"
    return {"json": qa_json("text_order", q, answer, sorted(words), {"words": words, "which": which},
                            0.15 * (n - 2))}


GENERATORS = {"text_fact": gen_text_fact, "text_arith": gen_text_arith, "text_count": gen_text_count,
              "text_order": gen_text_order}

"""What the synthetic-world generators share: vocabularies, per-sample RNG, the json of a sample.

Every sample draws from its own generator seeded by (seed, split, index), so a sample does not
depend on which others were built, on the order, or on the number of worker processes.
"""
from __future__ import annotations

from typing import Any

import numpy as np

SOURCE = "synthetic-world"
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220),
    "yellow": (235, 200, 20), "purple": (140, 40, 180), "orange": (250, 130, 20),
}
COLOR_NAMES = list(COLORS)
SHAPES = ["circle", "square", "triangle", "star"]
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars"}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "wds-shapes": 3, "wds-colors": 4}


def rng_for(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one sample: a pure function of (seed, split, index)."""
    code = SPLIT_CODES.get(split, sum(map(ord, split)) + 100)
    return np.random.default_rng([seed, code, index])


def pick(rng: np.random.Generator, items: list | tuple, n: int | None = None, replace: bool = False):
    """One item (n=None) or a list of n items of `items`, chosen by `rng`."""
    if n is None:
        return items[int(rng.integers(len(items)))]
    return [items[int(i)] for i in rng.choice(len(items), size=n, replace=replace)]


def a(word: str) -> str:
    """'a flute', 'an organ'."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def strip_placeholders(text: str) -> str:
    for p in ("<image>", "<video>", "<audio>", "<music>"):
        text = text.replace(p + "\n", "").replace(p, "")
    return text.strip()


def qa_json(task: str, prompt: str, answer: str, choices: list[str], labels: dict[str, Any],
            difficulty: float, quality: float = 1.0) -> dict[str, Any]:
    """A one-turn VQA sample: LLaVA conversations + question / gold answer / closed choice set."""
    assert answer in choices, (answer, choices)
    return {
        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}],
        "question": strip_placeholders(prompt), "answer": answer, "choices": list(choices),
        "task": task, "source": SOURCE, "quality": round(float(quality), 3),
        "difficulty": round(float(np.clip(difficulty, 0.0, 1.0)), 3), "labels": labels,
    }


def caption_json(task: str, prompt: str, caption: str, labels: dict[str, Any], difficulty: float,
                 quality: float = 1.0) -> dict[str, Any]:
    """A caption sample (alignment stage), also as a one-turn conversation as LLaVA's pretrain set has it."""
    return {
        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": caption}],
        "caption": caption, "task": task, "source": SOURCE, "quality": round(float(quality), 3),
        "difficulty": round(float(np.clip(difficulty, 0.0, 1.0)), 3), "labels": labels,
    }


def chat_json(task: str, turns: list[tuple[str, str]], labels: dict[str, Any], difficulty: float,
              quality: float = 1.0) -> dict[str, Any]:
    """A multi-turn conversation: [(human, gpt), ...]."""
    conv = []
    for q, a in turns:
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {"conversations": conv, "task": task, "source": SOURCE, "quality": round(float(quality), 3),
            "difficulty": round(float(np.clip(difficulty, 0.0, 1.0)), 3), "labels": labels}

"""A generated stand-in for TinyShakespeare, so that a fresh clone without the corpus (and
without network) runs every test that does not measure Shakespeare itself."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

# TinyShakespeare's 65 characters: the generated text uses every one, so a model built on it
# has the same vocabulary size (and parameter count) as on the real corpus.
SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CONSONANTS = "bcdfghjklmnprstvwyz"
_VOWELS = "aeiou"


def _word(rng: random.Random) -> str:
    return "".join(
        rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.choice((1, 1, 2, 2, 3)))
    ) + rng.choice(("", "", "s", "th", "n", "'d", "-a", "x", "q"))


def generated_play(num_chars: int = 1_100_000, seed: int = 0) -> str:
    """A play-shaped text of about `num_chars` characters: speakers in capitals, lines of
    words drawn from a Zipf-like vocabulary with a first-order Markov preference, so that a
    small model learns it (loss falls well below the uniform ln 65) without memorising it."""
    rng = random.Random(seed)
    words = [_word(rng) for _ in range(1500)]
    cum = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(words))))
    follow = {w: rng.choices(words, cum_weights=cum, k=4) for w in words}
    speakers = [
        f"{letter}{_word(rng)}".upper() if rng.random() < 0.3 else f"{letter}{_word(rng)}"
        for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    ]
    rare = ["$3", "&", "QUIZ", "JAX", "?"]
    parts: list[str] = []
    size = 0
    while size < num_chars:
        speech = [rng.choice(speakers) + ":\n"]
        for _ in range(rng.randint(1, 4)):
            word = rng.choices(words, cum_weights=cum)[0]
            line = [word.capitalize()]
            for _ in range(rng.randint(3, 10)):
                word = rng.choice(follow[word]) if rng.random() < 0.7 else rng.choice(words)
                line.append(word + ("," if rng.random() < 0.1 else ""))
            if rng.random() < 0.02:
                line.append(rng.choice(rare))
            speech.append(" ".join(line) + rng.choice(".;:!?.") + "\n")
        parts.append("".join(speech) + "\n")
        size += len(parts[-1])
    text = "".join(parts)
    missing = set(SHAKESPEARE_CHARS) - set(text)
    return text + "".join(sorted(missing)) + "\n" if missing else text


def write_generated_play(path: Path) -> Path:
    path.write_text(generated_play(), encoding="utf-8")
    return path

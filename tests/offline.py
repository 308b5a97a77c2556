"""Test assets made in the test, with no download: prose from a seeded generator, a byte-level BPE
tokenizer trained on it, and multiple-choice and chat task files. The unit tier runs on these alone,
so it needs neither the network nor the demo cache; tests that need real language use `demo`."""

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SUBJECTS = ("the council", "a farmer", "the river", "our nation", "the old bridge", "every worker", "the harbour")
VERBS = ("builds", "crosses", "protects", "remembers", "divides", "feeds", "measures", "welcomes")
OBJECTS = ("the valley", "a new road", "the northern towns", "its neighbours", "the winter grain", "the market")
CLAUSES = ("before the spring", "after a long debate", "with great care", "as the law requires", "in every season")
# ChatML, as the demo model's own template writes it: the tasks' chat items and chat calibration use it.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Eight made-up countries and capitals: what a task needs is items with one right choice, not true
# facts, and a tiny random model's tasks need only a few items.
CAPITALS = {f"Land{chr(65 + i)}{chr(97 + j)}": f"City{chr(97 + j)}{chr(65 + i)}" for i in range(2) for j in range(4)}


def prose(seed: int, paragraphs: int = 400) -> str:
    """Paragraphs of simple English sentences, the same for the same seed."""
    rng = random.Random(seed)

    def sentence() -> str:
        words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(CLAUSES)]
        return " ".join(words).capitalize() + "."

    return "\n\n".join(" ".join(sentence() for _ in range(rng.randint(6, 12))) for _ in range(paragraphs))


def train_tokenizer(dest: Path, text: str, vocab_size: int = 512) -> Path:
    """A byte-level BPE tokenizer trained on `text`, saved as a checkpoint ships one: tokenizer.json,
    tokenizer_config.json with its special tokens, and a chat template. Any text encodes (bytes)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.split("\n\n"), trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
    wrapped.save_pretrained(dest)
    return dest


def write_tasks(dest: Path, seed: int = 0) -> dict[str, Path]:
    """A four-way multiple-choice task and a chat task on the made-up capitals, as JSONL files."""
    rng = random.Random(seed)
    capitals = sorted(CAPITALS.values())
    quiz = []
    for country, capital in CAPITALS.items():
        choices = rng.sample([c for c in capitals if c != capital], 3) + [capital]
        rng.shuffle(choices)
        quiz.append(
            {"question": f"What is the capital of {country}?", "choices": choices, "answer": choices.index(capital)}
        )
    chat = [
        {
            "prompt": f"What is the capital of {country}? Answer with the city only.",
            "answer": capital,
            "match": "contains",
        }
        for country, capital in CAPITALS.items()
    ]
    dest.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, items in {"world_capitals": quiz, "capitals_chat": chat}.items():
        files[name] = dest / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(item) + "\n" for item in items))
    return files

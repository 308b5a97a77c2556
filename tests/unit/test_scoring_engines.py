"""The quality stages score through vLLM (validation.scoring.ServedScorer) with the same requests,
windows, items and gates as through transformers: here against a fake engine (tests.fake_openai)
that answers with real models' log-probabilities in vLLM's reply format, so what is checked is the
requests the stages make and how the replies are read. The real vLLM is compared in the e2e tier."""

import dataclasses
from pathlib import Path

import pytest
import torch

from awq_core.compute import Resolved
from awq_release.errors import ServerError
from deploy.engine import Serving
from deploy.server import Server
from tests.fake_openai import FakeScoringEngine
from validation import long_context, perplexity, tasks
from validation.scoring import Engines, chosen_engine
from validation.settings import LongContextSettings, PerplexitySettings, TaskSettings, TaskSpec

CPU_FP32 = Resolved(torch.device("cpu"), torch.float32, "test")


@dataclasses.dataclass
class FakeVLLM(Engines):
    """vLLM engines whose servers are the fake's served names, one per role."""

    base_url: str = ""

    def target(self) -> str:
        return "cpu"

    def _serve(self, model_dir: str | Path, role: str) -> Server:
        return Server(self.base_url, role, None, None)


def stage_settings(calib_file: Path, task_files: dict[str, Path]) -> dict:
    return {
        perplexity: PerplexitySettings(domain_texts=(calib_file,), max_tokens=1024, seqlen=128, stride=64),
        tasks: TaskSettings(tasks=tuple(TaskSpec(path) for path in task_files.values()), limit=8, max_new_tokens=6),
        long_context: LongContextSettings(texts=(calib_file,), lengths=(128, 256), documents=2, target_tokens=32),
    }


def test_every_quality_stage_gives_the_same_figures_through_vllm(tiny_llama, rtn_candidate, calib_file, task_files):
    models = {"baseline": str(tiny_llama), "candidate": str(rtn_candidate)}
    results = {}
    with FakeScoringEngine(models, CPU_FP32) as fake:
        for stage, settings in stage_settings(calib_file, task_files).items():
            ours = stage.run(tiny_llama, rtn_candidate, settings, CPU_FP32)
            with FakeVLLM("vllm", CPU_FP32, base_url=fake.base_url) as engines:
                served = stage.run(tiny_llama, rtn_candidate, settings, CPU_FP32, engines=engines)
            assert served.compute["engine"] == "vllm" and ours.compute["engine"] == "transformers"
            assert [m.name for m in served.metrics] == [m.name for m in ours.metrics]
            for theirs, mine in zip(served.metrics, ours.metrics, strict=True):
                assert theirs.value == pytest.approx(mine.value, rel=1e-4, abs=1e-5), theirs.name
                assert theirs.verdict == mine.verdict, theirs.name
            results[served.stage] = ours, served
        assert fake.requests > 0
    ours, served = results["tasks"]  # every item's score, multiple choice and chat replies alike
    for task in ours.details:
        assert served.details[task]["per_item"] == ours.details[task]["per_item"]
    ours, served = results["long_context"]
    for role, by_length in ours.details["by_length"].items():
        for length, figures in by_length.items():
            assert served.details["by_length"][role][length]["perplexity"] == pytest.approx(figures["perplexity"])
            assert served.details["by_length"][role][length]["retrieved"] == figures["retrieved"]


def test_a_reply_without_prompt_logprobs_is_a_clear_error(tiny_llama, calib_file):
    settings = PerplexitySettings(domain_texts=(calib_file,), max_tokens=256, seqlen=128, stride=64)
    models = {"baseline": str(tiny_llama), "candidate": str(tiny_llama)}
    with (
        FakeScoringEngine(models, CPU_FP32, drop_logprobs=True) as fake,
        FakeVLLM("vllm", CPU_FP32, base_url=fake.base_url) as e,
    ):
        with pytest.raises(ServerError, match="no log-probability for prompt position 1"):
            perplexity.run(tiny_llama, tiny_llama, settings, CPU_FP32, engines=e)


def test_the_figures_of_each_engine_are_kept_apart(tiny_llama):
    """A figure measured through one engine is never found for the other (validation.memo's address)."""
    transformers = Engines("transformers", CPU_FP32).address_part()
    vllm = FakeVLLM("vllm", CPU_FP32, Serving(tensor_parallel_size=2)).address_part()
    assert transformers == "transformers cpu float32" and vllm == "vllm cpu float16 tp2 w4a8=False"


def test_auto_scores_through_vllm_only_where_one_device_cannot_hold_the_model():
    assert chosen_engine("auto", CPU_FP32, Serving()) == "transformers"
    assert chosen_engine("auto", CPU_FP32, Serving(tensor_parallel_size=4)) == "vllm"
    assert chosen_engine("transformers", CPU_FP32, Serving(tensor_parallel_size=4)) == "transformers"

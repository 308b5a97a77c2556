"""The load stage's own client and gate against OpenAI-compatible servers of controlled latency
(tests.fake_openai, in a thread of the test): real sockets, real streaming, real time."""

import dataclasses

import pytest

from tests.fake_openai import FakeOpenAI
from validation import load_test
from validation.settings import SLA, LoadSettings


def test_an_accurate_but_slow_candidate_fails_the_sla(tiny_llama, calib_file, tmp_path):
    """The same replies, one server within the SLA and one too slow for it."""
    sla = SLA(ttft_p90_s=0.5, itl_p90_s=0.05, e2e_p99_s=5.0, min_output_tokens_per_s=20.0)
    settings = LoadSettings(
        prompt_texts=(calib_file,), concurrency=(1, 2), requests_per_level=4, prompt_tokens=32, output_tokens=8, sla=sla
    )
    with FakeOpenAI(token_delay_s=0.005) as fast:
        quick = load_test.run(tiny_llama, tiny_llama, dataclasses.replace(settings, endpoint=fast.base_url))
    with FakeOpenAI(token_delay_s=0.12, first_token_delay_s=0.6) as slow:
        sluggish = load_test.run(tiny_llama, tiny_llama, dataclasses.replace(settings, endpoint=slow.base_url))
    assert quick.status == "passed", quick.reasons
    assert sluggish.status == "failed"
    failed = {m.name for m in sluggish.metrics if not m.passed}
    assert {"c=1 TTFT p90 s", "c=1 ITL p90 s", "c=1 output tokens/s", "c=2 ITL p90 s"} <= failed
    assert "c=1 error rate" not in failed  # every request was answered: slow, not broken
    itl = next(m for m in sluggish.metrics if m.name == "c=1 ITL p90 s")
    assert itl.value == pytest.approx(0.12, abs=0.05) and itl.verdict == "fail"
    assert any(r.startswith("c=1 ITL p90 s: ") and "> threshold 0.05" in r for r in sluggish.reasons)

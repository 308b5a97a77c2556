"""Nothing is measured twice: a stage's figures of one model are kept at the address of everything they
depend on (validation.memo) and found by the next run that needs them; the power check's table is
addressed by what fine-tunes of one base share. Any changed input is measured again. (Releases that
find them, materialized: tests/integration/test_release_reuse.py.)"""

import dataclasses
import shutil
from pathlib import Path

import pytest

from awq_core import QuantConfig
from awq_core.compute import resolve
from awq_release.settings import from_dict
from tests.conftest import make_tiny_model, tiny_policy
from validation import models, run_stage
from validation.memo import Known, MemoryStore
from validation.power import power_check_address
from validation.settings import ValidationSettings


@pytest.fixture
def candidate(rtn_candidate) -> Path:
    return rtn_candidate


def settings_for(text: Path, task: Path) -> ValidationSettings:
    return from_dict(ValidationSettings, tiny_policy(text, task, "http://127.0.0.1:9")["validation"])


@pytest.fixture
def count_loads(monkeypatch) -> list[Path]:
    loads, real_load = [], models.load_model
    monkeypatch.setattr(
        models, "load_model", lambda path, compute=None: loads.append(Path(path)) or real_load(path, compute)
    )
    return loads


def test_a_stage_finds_each_models_figures_at_their_address(
    tmp_path, tiny_llama, candidate, calib_file, task_files, count_loads
):
    text = Path(shutil.copy(calib_file, tmp_path / "domain.txt"))
    settings = settings_for(text, task_files["world_capitals"])
    known = Known(MemoryStore(), {str(tiny_llama): "base-hash", str(candidate): "candidate-hash"})

    first = run_stage("perplexity", tiny_llama, candidate, settings, known=known)
    assert count_loads == [tiny_llama, candidate] and first.reused == []
    again = run_stage("perplexity", tiny_llama, candidate, settings, known=known)
    assert count_loads == [tiny_llama, candidate] and again.reused == ["baseline", "candidate"]
    assert again.metrics == first.metrics  # the same gate, to the last bit

    strided = dataclasses.replace(settings.perplexity, stride=32)
    run_stage("perplexity", tiny_llama, candidate, dataclasses.replace(settings, perplexity=strided), known=known)
    assert len(count_loads) == 4  # another setting: both measured again
    text.write_text(text.read_text() + " One more held-out sentence.")
    edited = run_stage("perplexity", tiny_llama, candidate, settings, known=known)
    assert len(count_loads) == 6 and edited.reused == []  # the same file name, other content
    run_stage("tasks", tiny_llama, candidate, settings, known=Known(known.store, {str(tiny_llama): "base-hash"}))
    assert count_loads[6:] == [tiny_llama, candidate]  # another stage; a folder with no content hash is measured


def test_the_power_check_is_addressed_by_settings_and_base_not_by_the_fine_tunes_weights(
    tmp_path, tokenizer_dir, tiny_llama, calib_file, task_files
):
    settings = settings_for(calib_file, task_files["world_capitals"])
    compute, quantization = resolve(), QuantConfig().fingerprint()

    def address(model: Path = tiny_llama, s: ValidationSettings = settings, q: str = quantization) -> str:
        return power_check_address(model, s, q, compute)

    tuned = make_tiny_model(tmp_path / "tuned", tokenizer_dir, seed=1)
    not_run = dataclasses.replace(settings.power_check, run=False)
    slower = dataclasses.replace(settings.load, requests_per_level=99)
    assert address() == address(tuned)  # another fine-tune of the same base
    assert address() == address(s=dataclasses.replace(settings, power_check=not_run, load=slower))
    wider = make_tiny_model(tmp_path / "wider", tokenizer_dir, hidden=256)
    stricter = dataclasses.replace(settings.perplexity, max_increase=0.01)
    changed = [
        address(wider),
        address(s=dataclasses.replace(settings, perplexity=stricter)),
        address(q=QuantConfig(group_size=32).fingerprint()),
    ]
    assert address() not in changed and len(set(changed)) == 3

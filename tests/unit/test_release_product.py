"""The release as a product: it starts for its target as it was load-tested (vllm-config.yaml and
serve.sh), its card is a Hugging Face model card, and the CLI reads like a tool."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from deploy.engine import Serving, engine_args, engine_env, launch_script, serving_target
from deploy.registry import release_launch
from orchestrator.cli.main import _print_outcomes, build_parser, main
from orchestrator.cli.main_job import JobOutcome
from orchestrator.lineage import queries as lineage
from orchestrator.lineage import session_scope, upgrade
from orchestrator.pipeline.sensors import scan
from orchestrator.release.card import model_card
from orchestrator.release.hashing import stat_signature
from orchestrator.release.manifest import card_facts, checkpoint_card
from orchestrator.release.policy import CardPolicy
from tests.conftest import add_lineage

log = logging.getLogger("test")


def test_a_cpu_release_names_its_kv_cache_and_4bit_path_a_gpu_release_its_memory_share(tiny_llama):
    cpu = engine_args(tiny_llama, "bot", Serving(cpu_kv_cache_gib=3), "cpu")
    gpu = engine_args(tiny_llama, "bot", Serving(gpu_memory_utilization=0.8), "gpu")
    # vLLM's CPU build reads gpu-memory-utilization as a share of host memory and refuses to start where less is free
    assert cpu["kv-cache-memory-bytes"] == 3 * 2**30 and "gpu-memory-utilization" not in cpu
    assert gpu["gpu-memory-utilization"] == 0.8 and "kv-cache-memory-bytes" not in gpu
    assert engine_env(Serving(), "cpu") == {
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_INT4_W4A8": "0",
        "VLLM_CPU_KVCACHE_SPACE": None,
    }
    assert engine_env(Serving(), "gpu") == {"HF_HUB_OFFLINE": "1"}
    assert [serving_target(Serving(), found) for found in ("cpu", "gpu", None)] == ["cpu", "gpu", "gpu"]
    assert serving_target(Serving(target="cpu"), "gpu") == "cpu"  # the policy's word over the load test's host


def test_serve_sh_starts_vllm_with_its_environment_and_the_config_beside_it(tmp_path):
    """A stand-in for Python prints what vLLM would have been started with: the script's own
    environment, the config file beside it, and the caller's arguments."""
    (tmp_path / "serve.sh").write_text(launch_script(engine_env(Serving(), "cpu")))
    fake_python = tmp_path / "python"
    fake_python.write_text(
        '#!/bin/sh\necho "W4A8=$VLLM_CPU_INT4_W4A8 OFFLINE=$HF_HUB_OFFLINE KV=${VLLM_CPU_KVCACHE_SPACE-unset}"\n'
        'echo "$@"\n'
    )
    fake_python.chmod(0o755)
    env = os.environ | {"PATH": f"{tmp_path}:{os.environ['PATH']}", "VLLM_CPU_KVCACHE_SPACE": "40"}
    done = subprocess.run(
        ["sh", str(tmp_path / "serve.sh"), "--port", "8001"], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines() == [
        "W4A8=0 OFFLINE=1 KV=unset",
        f"-m vllm.entrypoints.openai.api_server --config {tmp_path}/vllm-config.yaml --port 8001",
    ]


def manifest_of(tmp_path: Path, tiny_llama: Path, license: str | None = "apache-2.0") -> dict:
    gate = {
        "baseline": 10.0,
        "candidate": 10.9000004,
        "value": 0.09,
        "interval": [0.05, 0.12],
        "threshold": 0.2,
        "bound": "ceiling",
        "verdict": "pass",
        "passed": True,
    }
    throughput = gate | {"value": 24.0, "candidate": 24.0, "baseline": None, "interval": None, "threshold": 1.0}
    launch = release_launch(tmp_path / "registry", "support-bot", "v0003", tiny_llama, Serving(), "cpu")
    return {
        "model": "support-bot",
        "version": "v0003",
        "release_id": 3,
        "attempt": "3f1c0a5e-run",
        "checkpoint": {
            "id": 1,
            "name": "support-bot-ft",
            "path": "/data/checkpoints/support-bot-ft",
            "content_hash": "ab" * 32,
            "base_model": None,
            "adapter": None,
        },
        "calibration": {
            "id": 1,
            "tokens_hash": "cd" * 32,
            "n_samples": 16,
            "seqlen": 512,
            "sources": {f"/data/texts/chat-{i:02}.txt": "ef" * 32 for i in range(14)},
        },
        "quantization": {
            "id": 1,
            "settings": {"group_size": 64, "zero_point": True, "format": "awq"},
            "output_hash": "12" * 32,
            "policy_hash": "34" * 32,
            "seconds": 20.0,
        },
        "files": {},
        "validation": {
            "perplexity": {"status": "passed", "reasons": [], "metrics": {"domain perplexity increase": gate}},
            "load": {
                "status": "passed",
                "reasons": [],
                "metrics": {"c=1 output tokens/s": throughput | {"bound": "floor"}},
            },
            "tasks": {"status": "skipped", "reasons": ["skipped: no task sets here"], "metrics": {}},
        },
        "power_check": None,
        "policy": {"id": 1, "hash": "56" * 32, "text": ""},
        "serving": launch,
        "card": {"license": license, "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "chat_template": True},
    }


def test_the_card_parses_as_a_hugging_face_model_card_with_results_snippets_and_lineage(tmp_path, tiny_llama):
    manifest = manifest_of(tmp_path, tiny_llama)
    (tmp_path / "README.md").write_text(model_card(manifest, ("load",)))
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data
    assert (data.license, data.base_model, data.pipeline_tag) == (
        "apache-2.0",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "text-generation",
    )
    assert (
        {"awq", "int4", "4-bit"} <= set(data.tags)
        and len(set(data.tags)) == len(data.tags)
        and data.to_dict()["base_model_relation"] == "quantized"
    )
    results = {r.metric_name: r for r in data.eval_results}
    assert set(results) == {"domain perplexity increase", "c=1 output tokens/s"}  # a skipped stage has none
    assert results["domain perplexity increase"].metric_value == 10.9  # six digits for people; all in manifest.json
    assert results["domain perplexity increase"].metric_args["interval"] == [0.05, 0.12]
    assert results["c=1 output tokens/s"].metric_args["bound"] == "floor"
    text = card.text
    release = tmp_path / "registry" / "support-bot" / "releases" / "v0003"
    assert f"sh {release}/serve.sh --port 8000" in text
    assert '"model": "support-bot"' in text and "http://127.0.0.1:8000/v1/chat/completions" in text
    assert f'path = "{release}"' in text and "apply_chat_template" in text
    assert "`VLLM_CPU_INT4_W4A8=0`" in text and "2 GiB of KV cache" in text
    assert "| <= 0.2 ceiling |" in text and "| >= 1 floor |" in text
    assert "8192 tokens: 16 windows of 512 tokens" in text and "`/data/texts/chat-00.txt`" in text
    assert "and 2 more, each with its hash in manifest.json" in text
    assert f"- source folder: `/data/checkpoints/support-bot-ft`\n- checkpoint content sha256: `{'ab' * 32}`" in text
    assert f"- release policy sha256: `{'56' * 32}`" in text and "- attempt (Dagster run): `3f1c0a5e-run`" in text
    assert "| tasks | not run: skipped: no task sets here |" in text
    assert "Every gate below passed; tasks did not run here, which the policy allows" in text
    unlicensed = ModelCard(model_card(manifest_of(tmp_path, tiny_llama, license=None))).data
    assert unlicensed.license is None  # never a guessed licence


@pytest.mark.parametrize(
    "readme",
    [
        "---\nlicense: !!python/object/apply:os.system ['touch pwned']\n---\n",  # YAML that would run code
        "---\n- a list, not a mapping\n---\n",
        "---\nlicense: 'apache 2.0; rm -rf /'\nbase_model: '../../etc/passwd'\n---\n",
        "no front matter at all\n",
        "---\nlicense: [unclosed\n---\n",
    ],
)
def test_a_checkpoints_readme_gives_only_well_formed_ids_and_runs_nothing(tmp_path, readme, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text(readme)
    assert checkpoint_card(tmp_path) == {} and not (tmp_path / "pwned").exists()


def test_the_policy_then_the_checkpoints_readme_then_its_config_name_the_origin(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: llama3.1\nbase_model: meta-llama/Llama-3.1-8B\n---\n# card\n")
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
    assert card_facts(CardPolicy(), "org/other", tmp_path) == {
        "license": "llama3.1",
        "base_model": "meta-llama/Llama-3.1-8B",
        "chat_template": True,
    }
    assert card_facts(CardPolicy(license="mit", base_model="org/own"), None, tmp_path)["license"] == "mit"
    (tmp_path / "README.md").unlink()
    assert card_facts(CardPolicy(), "org/base", tmp_path)["base_model"] == "org/base"


def test_every_command_describes_itself_in_its_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        assert sub.description and len(sub.description) > 20, name
    with pytest.raises(SystemExit):
        main(["rollback", "--help"])
    assert "Make the previous promoted release of MODEL current again" in capsys.readouterr().out


@pytest.fixture
def one_release(tmp_path, monkeypatch, tiny_llama) -> str:
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    monkeypatch.setenv("AWQ_RELEASE_DATABASE_URL", url)
    monkeypatch.setenv("AWQ_RELEASE_REGISTRY", str(tmp_path / "registry"))
    engine = upgrade(url)
    run_id = add_lineage(engine)
    manifest = manifest_of(tmp_path, tiny_llama)
    with session_scope(engine) as session:
        row = lineage.record_release(session, "support-bot", "promoted", 1, run_id, manifest)
        row.path = str(tmp_path / "registry" / "support-bot" / "releases" / "v0001")
        lineage.add_event(session, row.id, "promoted", "first release")
    return url


def test_show_reads_like_a_summary_and_json_holds_the_rest(one_release, capsys):
    assert main(["show", "v0001", "--model", "support-bot"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.startswith("support-bot v0001: promoted (created ")
    assert "serve.sh --port 8000   (target: cpu)" in out
    assert f"checkpoint    support-bot-ft (sha256 {'ab' * 8}…), from /data/checkpoints/support-bot-ft" in out
    assert "calibration   16 x 512 tokens from 14 files" in out and "attempt 3f1c0a5e-run" in out
    assert "promoted     first release" in out and len(out.splitlines()) < 40
    assert main(["show", "v0001", "--model", "support-bot", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["manifest"]["attempt"] == "3f1c0a5e-run"


def test_diff_of_a_release_with_itself_says_there_is_no_difference(one_release, capsys):
    assert main(["diff", "v0001", "v0001", "--model", "support-bot"]) == 0
    assert capsys.readouterr().out == "no differences between v0001 and v0001 in settings, gate figures or status\n"


def test_an_error_goes_to_stderr_alone(one_release, capsys):
    assert main(["show", "v0009", "--model", "support-bot"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and len(err.splitlines()) == 1


def test_the_history_commands_load_neither_torch_nor_dagster(one_release):
    """What keeps `history` and `show` near a second: the model stacks are never imported."""
    probe = (
        "import sys; from orchestrator.cli.main import main; main(['history']); main(['show', 'v0001']);"
        "print(sorted(m for m in ('torch', 'dagster', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=os.environ)
    assert done.stdout.splitlines()[-1] == "[]"


def test_the_summary_has_a_total_and_says_not_run(capsys):
    outcome = JobOutcome("bot", True, "run-1", {"awq_model": 20.4, "power_check": None, "release": 0.2}, 301.0)
    _print_outcomes([outcome], [])
    assert "time: 301 s in all; per step: awq_model 20 s, power_check not run, release 0 s" in capsys.readouterr().out


def test_the_sensors_first_word_on_a_released_folder_is_that_it_was_released(tmp_path, caplog):
    watched = tmp_path / "checkpoints"
    (watched / "bot").mkdir(parents=True)
    (watched / "bot" / "config.json").write_text("{}")
    (watched / "new").mkdir()
    released = stat_signature(watched / "bot")
    with caplog.at_level(logging.INFO):
        scan(watched, {}, set(), lambda source: ["released"] if source == released else [], 3, log)
    assert caplog.messages == [
        "skip 'bot': released before",
        "skip 'new': first seen; taken at the next tick if it is unchanged by then",
    ]

"""The whole release chain materialized in process on the demo model, with settings sized for CI:
an honest checkpoint is promoted with every lineage row; a damaged quantization is rejected, with
why, and the previous release stays current. The load stage is not required by this policy: where
this host's vLLM cannot run 4-bit AWQ it is recorded as skipped everywhere, never as passed."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml
from huggingface_hub import ModelCard
from sqlalchemy import func, select
from transformers import AutoTokenizer

from awq_core.loader import load_quantized
from deploy.capability import vllm_awq_capability
from deploy.registry import current_version, safe_name
from orchestrator.cli.main import main
from orchestrator.lineage import models as db
from orchestrator.lineage import session_scope
from orchestrator.pipeline.assets import release_assets
from orchestrator.pipeline.partitions import CHECKPOINTS
from orchestrator.pipeline.resources import LineageDatabase, Platform, ScoringEngines
from orchestrator.release.policy import ReleasePolicy
from tests.fake_openai import FakeOpenAI

JSON = {"Content-Type": "application/json"}


def policy(demo, work, quantization: dict) -> dict:
    tasks = work / "capitals.jsonl"
    tasks.write_text("".join(line + "\n" for line in demo.tasks["world_capitals"].read_text().splitlines()[:24]))
    domain = [str(p) for p in demo.domain_eval_texts]
    return {
        "model_name": "demo-bot",
        "calibration": {"texts": [str(p) for p in demo.calibration_texts[-8:]], "n_samples": 4, "seqlen": 256},
        "quantization": {"group_size": 64, "search_tokens": 1024, "n_grid": 10} | quantization,
        "validation": {
            "perplexity": {
                "domain_texts": domain[-2:],
                "max_tokens": 1024,
                "seqlen": 256,
                "stride": 128,
                "max_increase": 0.3,
            },
            "tasks": {"tasks": [{"path": str(tasks)}], "max_drop": 0.3},
            "long_context": {
                "texts": domain,
                "lengths": [512],
                "documents": 1,
                "max_degradation": 0.5,
                "max_growth": 1.0,
                "max_retrieval_drop": 1.0,
            },
            "load": {
                "prompt_texts": domain,
                "concurrency": [2],
                "requests_per_level": 4,
                "prompt_tokens": 64,
                "output_tokens": 8,
                "required": False,
            },
            # A perplexity-only check of damage perplexity cannot see: the release must say its gates are blind.
            "power_check": {"run": True, "damages": ["long_range_rotary"], "stages": ["perplexity"]},
        },
        "target_gpu": {"name": "L4 24GB", "memory_gib": 24},
        "serving": {"max_model_len": 2048, "max_num_seqs": 8, "dtype": "bfloat16", "enforce_eager": True},
        "card": {"license": "apache-2.0", "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
    }


@pytest.fixture(scope="module")
def platform_root(tmp_path_factory, demo):
    root = tmp_path_factory.mktemp("platform")
    (root / "work").mkdir()
    for name, quantization in (("honest", {}), ("damaged", {"method": "rtn", "bits": 2})):
        (root / f"{name}.yaml").write_text(yaml.safe_dump(policy(demo, root / "work", quantization)))
    return root


def materialize(root, folder_name: str, policy_name: str, instance) -> dg.ExecuteInProcessResult:
    platform = Platform(
        checkpoints_dir=str(root / "checkpoints"),
        registry_dir=str(root / "registry"),
        work_dir=str(root / "work"),
        policy_path=str(root / f"{policy_name}.yaml"),
    )
    key = safe_name(folder_name)
    instance.add_dynamic_partitions(CHECKPOINTS.name, [key])
    return dg.materialize(
        release_assets(ReleasePolicy()),
        partition_key=key,
        instance=instance,
        raise_on_error=False,
        resources={
            "platform": platform,
            "lineage": LineageDatabase(url=f"sqlite:///{root / 'lineage.db'}"),
            "scoring": ScoringEngines(),
        },
    )


def serves_as_the_card_says(release_dir: Path, card: str) -> None:
    """The card's own two lines, run as they stand with only vLLM's Python put first on PATH: serve.sh
    starts, the curl gets the model's answer, and it answers a fact as our loader does. Then the
    engine dies, and its API server goes with it."""
    script = card.split("```bash\n", 1)[1].split("\n```", 1)[0]
    serve_line, request = script.split("\n", 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    log = release_dir.parent.parent / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            serve_line, shell=True, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        while subprocess.run(["curl", "-sf", "http://127.0.0.1:8000/health"], capture_output=True).returncode:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        reply = json.loads(subprocess.run(request, shell=True, capture_output=True, text=True, check=True).stdout)
        assert reply["model"] == "demo-bot" and reply["choices"][0]["message"]["content"].strip()
        same_answer_as_our_loader(release_dir, "http://127.0.0.1:8000")
        engine_core = subprocess.run(
            ["pgrep", "-g", str(server.pid), "-f", "EngineCore"], capture_output=True, text=True
        )
        os.kill(int(engine_core.stdout.split()[0]), signal.SIGKILL)
        server.wait(60)  # exec: the script's process is the API server, and it shuts down (vLLM exits 0)
        deadline = time.monotonic() + 15  # its helpers (multiprocessing's resource tracker) follow it
        while (left := session_processes(server.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"processes left after the engine died: {left}"
    finally:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def same_answer_as_our_loader(release_dir: Path, base_url: str) -> None:
    """vLLM's greedy completion of a fact knows it, and our own loader's starts with the same word
    (vLLM's text leaves special tokens out; so must ours: in bf16 the answer may end at <|im_end|>)."""
    prompt = "The capital of France is"
    body = {"model": "demo-bot", "prompt": prompt, "max_tokens": 12, "temperature": 0}
    request = urllib.request.Request(f"{base_url}/v1/completions", json.dumps(body).encode(), JSON)
    with urllib.request.urlopen(request, timeout=120) as reply:
        completion = json.loads(reply.read())
    text = completion["choices"][0]["text"]
    assert completion["usage"]["completion_tokens"] == 12 and "Paris" in text, text
    tokenizer = AutoTokenizer.from_pretrained(release_dir)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    ours = load_quantized(release_dir).generate(ids, max_new_tokens=4, do_sample=False)
    assert tokenizer.decode(ours[0, ids.shape[1] :], skip_special_tokens=True).split()[0] == text.split()[0]


def session_processes(session: int) -> str:
    return subprocess.run(["ps", "-o", "pid=,args=", "-s", str(session)], capture_output=True, text=True).stdout.strip()


def count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def test_honest_checkpoint_is_promoted_and_damaged_one_rejected(platform_root, demo, monkeypatch, capsys):
    root = platform_root
    shutil.copytree(demo.model_dir, root / "checkpoints" / "demo-bot")
    damaged = shutil.copytree(demo.model_dir, root / "checkpoints" / "デモ bot 2")  # names in any script work
    (damaged / "NOTES.md").write_text("another fine-tune")  # other content, other hash
    engine = LineageDatabase(url=f"sqlite:///{root / 'lineage.db'}").engine()
    load_runs = vllm_awq_capability().runs_awq

    with dg.instance_for_test() as instance:
        result = materialize(root, "demo-bot", "honest", instance)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        metadata = {
            m.asset_key.to_user_string(): m.metadata
            for m in (e.event_specific_data.materialization for e in result.get_asset_materialization_events())
        }
        assert "layer_errors" in metadata["awq_model"] and "footprint" in metadata["checkpoint"]
        assert (
            metadata["awq_model"]["device"].value == "cpu"
            and metadata["perplexity_validation"]["compute"].value["device"] == "cpu"
        )
        checks = {check.check_name: check.passed for check in result.get_asset_check_evaluations()}
        assert all(passed for name, passed in checks.items() if name != "load_gate")
        (perplexity_check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "perplexity_gate"]
        gated = perplexity_check.metadata["metrics"].value["domain perplexity increase"]
        low, high = gated["interval"]
        assert low <= gated["value"] <= high <= 0.3 and gated["verdict"] == "pass"
        assert metadata["power_check"]["blind"].value is True and "| long_range_rotary |" in (
            metadata["power_check"]["table"].value
        )
        assert metadata["load_validation"]["status"].value == ("passed" if load_runs else "skipped")
        # skipped is never shown as passed
        assert checks["load_gate"] is load_runs and ("plot" in metadata["load_validation"]) is load_runs

        with session_scope(engine) as session:
            assert [count(session, m) for m in (db.Checkpoint, db.CalibrationSet, db.QuantizationRun)] == [1, 1, 1]
            assert count(session, db.ValidationStage) == 4
            assert count(session, db.ValidationMetric) >= (10 if load_runs else 5)
            rows = session.scalars(select(db.ValidationMetric)).all()
            assert all(r.verdict == "pass" and r.passed for r in rows if r.low is not None)
            assert all(r.low <= r.value <= r.high for r in rows if r.metric.endswith("perplexity increase"))
            (outcome,) = session.scalars(select(db.PowerCheckOutcome)).all()
            assert (outcome.damage, outcome.verdicts, outcome.meant_for) == (
                "long_range_rotary",
                {"perplexity": "missed"},
                "long_context",
            )
            load_row = session.scalars(select(db.ValidationStage).where(db.ValidationStage.stage == "load")).one()
            assert load_row.status == ("passed" if load_runs else "skipped") and load_row.passed is load_runs
            (promoted,) = session.scalars(select(db.Release)).all()
            assert (promoted.model, promoted.version, promoted.status) == ("demo-bot", "v0001", "promoted")
        release_dir = root / "registry" / "demo-bot" / "releases" / "v0001"
        manifest = json.loads((release_dir / "manifest.json").read_text())
        assert manifest["checkpoint"]["name"] == "demo-bot" and manifest["quantization"]["settings"]["group_size"] == 64
        assert set(manifest["validation"]) == {"perplexity", "tasks", "long_context", "load"}
        policy_hash = hashlib.sha256((root / "honest.yaml").read_bytes()).hexdigest()  # the run's one policy
        assert manifest["policy"]["hash"] == manifest["quantization"]["policy_hash"] == policy_hash
        assert manifest["validation"]["load"]["status"] == ("passed" if load_runs else "skipped")
        assert manifest["quantization"]["settings"]["compute"]["dtype"] in ("float32", "bfloat16")
        card = (release_dir / "README.md").read_text()
        figures = ["load", "long_context", "quantization"] if load_runs else ["long_context", "quantization"]
        assert sorted(p.stem for p in (release_dir / "plots").glob("*.png")) == figures
        assert all(f"](plots/{name}.png)" in card for name in figures)
        assert all((release_dir / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG" for name in figures)
        assert f"sh {release_dir}/serve.sh --port 8000" in card and "gptqmodel" in card and "load_quantized" in card
        hub_card = ModelCard.load(release_dir / "README.md")
        assert (hub_card.data.license, hub_card.data.base_model) == (
            "apache-2.0",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
        )
        gated = {f"{s}.{n}" for s, r in manifest["validation"].items() for n in r["metrics"]}
        assert {r.metric_name for r in hub_card.data.eval_results} == {name.split(".", 1)[1] for name in gated}
        steps = "AWQ scales + symmetric range search + rounded to nearest"
        auto = "(auto: 1024 calibration tokens, fewer than 32768)"  # the card says why GPTQ was off
        assert f"group size 64, asymmetric, {steps} {auto}, written as `awq`, calibrated on 1024 tokens" in card
        assert load_runs or "| load | not run: skipped: " in card
        assert manifest["power_check"]["blind"] is True and "WARNING: the gates caught none of the 1 planted" in card
        rotary = "8 slowest rotary pairs (of 32) reflected in every self_attn.q_proj and self_attn.k_proj"
        assert f"| long_range_rotary | {rotary} | missed |" in card
        ppl = manifest["validation"]["perplexity"]["metrics"]["domain perplexity increase"]
        assert ppl["verdict"] == "pass" and f"| {ppl['verdict']} |" in card and len(ppl["interval"]) == 2
        assert manifest["files"]["config.json"] and "\n# demo-bot v0001 (AWQ INT4)\n" in card
        launch = yaml.safe_load((release_dir / "vllm-config.yaml").read_text())
        assert (launch["quantization"], launch["model"]) == ("awq", str(release_dir))
        assert (launch["max-model-len"], launch["max-num-seqs"], launch["enforce-eager"]) == (2048, 8, True)
        assert launch["host"] == "127.0.0.1"  # the card's serving command listens on this host only
        if load_runs:  # the load stage started what the release ships: only the folder and its name differ
            started = yaml.safe_load(next((root / "work").rglob("vllm-candidate.yaml")).read_text())
            own = ("model", "served-model-name")
            assert started | {k: launch[k] for k in own} == launch and started["served-model-name"] == "candidate"
            script = next((root / "work").rglob("vllm-candidate.sh")).read_text()
            assert script.replace("vllm-candidate.yaml", "vllm-config.yaml") == (release_dir / "serve.sh").read_text()
            assert launch["kv-cache-memory-bytes"] == 2 * 2**30 and "gpu-memory-utilization" not in launch
            serves_as_the_card_says(release_dir, card)
        assert current_version(root / "registry", "demo-bot") == "v0001"

        result = materialize(root, "デモ bot 2", "damaged", instance)
        assert not result.success
        assert not [c for c in result.get_asset_check_evaluations() if c.check_name == "perplexity_gate" and c.passed]
        materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert "power_check" not in materialized  # a failed gate skips it: nothing to learn from a rejected candidate

    with session_scope(engine) as session:
        (rejected,) = session.scalars(
            select(db.Release).where(db.Release.status == "rejected")
        ).all()  # one per quantization run
        assert rejected.path is None and rejected.version == "v0002" and "perplexity gate failed" in rejected.reason
        events = session.scalars(select(db.ReleaseEvent).where(db.ReleaseEvent.release_id == rejected.id)).all()
        assert len(events) == rejected.reason.count("gate failed")  # one event per failed gate
    assert current_version(root / "registry", "demo-bot") == "v0001"
    assert sorted(p.name for p in (root / "registry" / "demo-bot" / "releases").iterdir()) == ["v0001"]

    # The history commands read the same database (in this process: the console script's imports
    # would cost each call ten seconds; test_console_scripts runs the console script itself).
    monkeypatch.setenv("AWQ_RELEASE_DATABASE_URL", f"sqlite:///{root / 'lineage.db'}")
    monkeypatch.setenv("AWQ_RELEASE_REGISTRY", str(root / "registry"))

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        printed = capsys.readouterr()
        return code, printed.out, printed.err

    history = json.loads(cli("history", "--model", "demo-bot", "--json")[1])
    assert [(r["model"], r["version"], r["status"]) for r in history] == [
        ("demo-bot", "v0001", "promoted"),
        ("demo-bot", "v0002", "rejected"),
    ]
    assert (
        all(r["created_at"] for r in history) and history[0]["gates"]["perplexity.domain perplexity increase"]["passed"]
    )
    assert history[0]["stages"]["load"]["status"] == ("passed" if load_runs else "skipped")
    printed = cli("history", "--model", "demo-bot")[1]
    assert load_runs or "skipped: load" in printed
    assert "power check: BLIND, 0/1 planted damages caught" in printed and history[0]["power_check"]["blind"]
    assert json.loads(cli("show", "v0001", "--model", "demo-bot", "--json")[1])["manifest"]["version"] == "v0001"
    shown = cli("show", "v0001", "--model", "demo-bot")[1]
    assert shown.startswith("demo-bot v0001: promoted, current") and f"sh {release_dir}/serve.sh" in shown
    assert cli("diff", "v0001", "v0001", "--model", "demo-bot")[1].startswith("no differences between v0001 and v0001")
    diff = cli("diff", "v0001", "v0002", "--model", "demo-bot")[1]
    assert "settings.method" in diff and "rtn" in diff and "status" in diff
    code, _, stderr = cli("rollback", "demo-bot")
    assert code == 2 and "nothing earlier to roll back to" in stderr


@pytest.mark.vllm
def test_a_release_validated_through_vllm_is_promoted(tmp_path, demo):
    """validation.engine: vllm: the quality stages score both models through vLLM servers started with
    the release's engine arguments, and the release records that its gates judged the served numerics."""
    (tmp_path / "work").mkdir()
    served = policy(demo, tmp_path / "work", {})
    shutil.copytree(demo.model_dir, tmp_path / "checkpoints" / "demo-bot")
    # The load stage against an endpoint: its own vLLM server is the other platform test's.
    with FakeOpenAI() as endpoint, dg.instance_for_test() as instance:
        load = served["validation"]["load"] | {"endpoint": endpoint.base_url}
        served["validation"] |= {"engine": "vllm", "power_check": {"run": False}, "load": load}
        (tmp_path / "served.yaml").write_text(yaml.safe_dump(served))
        result = materialize(tmp_path, "demo-bot", "served", instance)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    release_dir = tmp_path / "registry" / "demo-bot" / "releases" / "v0001"
    manifest = json.loads((release_dir / "manifest.json").read_text())
    for stage in ("perplexity", "tasks", "long_context"):
        compute = manifest["validation"][stage]["compute"]
        assert (compute["engine"], compute["target"], compute["dtype"]) == ("vllm", "cpu", "bfloat16"), stage
        assert manifest["validation"][stage]["status"] == "passed"
    # one server per model for the three stages, started as the release's serve.sh starts it
    logs = sorted(p.name for p in (tmp_path / "work").rglob("vllm-scoring-*.sh"))
    assert logs == ["vllm-scoring-baseline.sh", "vllm-scoring-candidate.sh"]
    started = yaml.safe_load(next((tmp_path / "work").rglob("vllm-scoring-candidate.yaml")).read_text())
    launch = yaml.safe_load((release_dir / "vllm-config.yaml").read_text())
    assert started["quantization"] == launch["quantization"] == "awq" and started["dtype"] == launch["dtype"]
    assert current_version(tmp_path / "registry", "demo-bot") == "v0001"

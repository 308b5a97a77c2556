"""The four stages on the demo model: honest AWQ passes, a damaged candidate fails, the CLI reports it."""

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml

from awq_core.compute import resolve
from awq_release.errors import ServerError
from deploy.engine import Serving, engine_args, engine_env
from deploy.server import serve
from orchestrator.cli.main import main
from validation import load_test
from validation.settings import SLA, LoadSettings

# What the load stage starts in these tests: eager (no minute of compilation on a CPU), 2K positions.
SERVING = {"max_model_len": 2048, "dtype": "bfloat16", "enforce_eager": True}


@pytest.fixture(scope="module")
def policy(tmp_path_factory, demo) -> dict:
    """The demo policy, trimmed so each stage takes seconds to a minute on 2 cores."""
    return {
        "perplexity": {
            "domain_texts": [str(p) for p in demo.domain_eval_texts[-4:]],
            "general_texts": [str(demo.general_eval_texts[0])],
            "max_tokens": 2048,
            "max_increase": 0.25,
        },
        # The chat task's own threshold: AWQ loses about a quarter of a 135M model's chat answers, and
        # 48 items put a +-34% interval on that; 50% still catches a broken model, which loses them all.
        "tasks": {
            "tasks": [
                {"path": str(demo.tasks["world_capitals"])},
                {"path": str(demo.tasks["capitals_chat"]), "critical": True, "max_drop": 0.5},
            ],
            "limit": 48,
            "max_drop": 0.2,
            "max_drop_critical": 0.2,
        },
        "long_context": {
            "texts": [str(p) for p in demo.domain_eval_texts],
            "lengths": [512, 2048],
            "documents": 1,  # 128 scored tokens per length: a 95% interval of about +-10 points
            "max_degradation": 0.35,
            "max_growth": 0.15,
            "max_retrieval_drop": 1.0,
        },
        "load": {
            "prompt_texts": [str(p) for p in demo.domain_eval_texts],
            "concurrency": [1, 4],
            "requests_per_level": 6,
            "prompt_tokens": 96,
            "output_tokens": 16,
            "log_dir": str(tmp_path_factory.mktemp("logs")),
        },
    }


def validate(
    baseline: Path, candidate: Path, stages: list[str], policy: dict, tmp_path: Path, *extra: str, serving=SERVING
) -> tuple[int, dict, str]:
    """`awq-release validate ... --json` in this process, where torch and the stages are imported once
    (the console script's own start is test_console_scripts'): its exit code, report and stderr."""
    config = tmp_path / "policy.yaml"
    config.write_text(yaml.safe_dump({"validation": policy, "serving": serving}))
    args = [
        "validate",
        str(baseline),
        str(candidate),
        *[a for s in stages for a in ("--stage", s)],
        "--config",
        str(config),
        "--json",
        *extra,
    ]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, json.loads(out.getvalue()) if out.getvalue().strip() else {}, err.getvalue()


def test_honest_awq_passes_the_quality_gates_on_evidence(demo, demo_quantized, policy, tmp_path):
    """Damaged candidates failing these gates: test_power_check_shows_which_stage_catches_which_damage."""
    code, report, stderr = validate(demo.model_dir, demo_quantized / "awq", ["perplexity", "tasks"], policy, tmp_path)
    assert code == 0 and report["passed"] is True, stderr + json.dumps(
        {k: v["reasons"] for k, v in report.get("stages", {}).items()}
    )
    tasks = report["stages"]["tasks"]
    capitals = tasks["details"]["world_capitals"]["metrics"]
    assert capitals["acc"]["baseline"] > 0.5 and capitals["acc_norm"]["n"] == 48  # clearly above the 0.25 of chance
    for stage in ("perplexity", "tasks"):  # every gate decided on its interval
        for m in report["stages"][stage]["metrics"]:
            low, high = m["interval"]
            assert low <= m["value"] <= high and m["verdict"] in ("pass", "inconclusive") and m["passed"]
    # 48 items cannot resolve a 20% gate well, and the stage says how many would.
    assert any("48 items put a ±" in w for w in tasks["warnings"])


def test_long_context_stage(demo, demo_quantized, policy, tmp_path):
    code, report, stderr = validate(demo.model_dir, demo_quantized / "awq", ["long_context"], policy, tmp_path)
    stage = report["stages"]["long_context"]
    assert code == 0, stderr + json.dumps(stage["reasons"])
    assert stage["details"]["lengths"] == [512, 2048]
    assert {m["name"] for m in stage["metrics"]} >= {
        "perplexity increase at 512 tokens",
        "perplexity increase at 2048 tokens",
        "degradation growth 512 -> 2048 tokens",
    }

    code, _, stderr = validate(
        demo.model_dir,
        demo_quantized / "awq",
        ["long_context"],
        policy | {"long_context": policy["long_context"] | {"lengths": [512, 16384]}},
        tmp_path,
    )
    assert code == 2 and "[16384] exceed the model's 8192 positions" in stderr


@pytest.mark.vllm
def test_the_quality_stages_score_through_vllm_as_through_transformers(demo, demo_quantized, policy, tmp_path):
    """validation.engine: vllm scores both models through vLLM servers started with the release's
    serving arguments, one per model for both stages, on the same windows and items: the same
    verdicts, each model's perplexity within 1%, and nearly every task item scored alike. (Long
    context through vLLM: tests/e2e/test_platform.py; its arithmetic on both paths: the unit tier.)"""
    stages = ["perplexity", "tasks"]
    trimmed = policy | {  # the suite's time: one domain text set, one task
        "perplexity": policy["perplexity"] | {"general_texts": [], "max_tokens": 2048},
        "tasks": policy["tasks"] | {"tasks": [{"path": str(demo.tasks["world_capitals"])}]},
    }
    served_policy = trimmed | {"engine": "vllm", "load": policy["load"] | {"log_dir": str(tmp_path / "logs")}}
    reports = {}
    for engine, settings in (("transformers", trimmed), ("vllm", served_policy)):
        code, reports[engine], stderr = validate(demo.model_dir, demo_quantized / "awq", stages, settings, tmp_path)
        assert code == 0, stderr + json.dumps({k: v["reasons"] for k, v in reports[engine].get("stages", {}).items()})
    ours, served = (reports[e]["stages"] for e in ("transformers", "vllm"))
    assert {stage["compute"]["engine"] for stage in served.values()} == {"vllm"}
    assert sorted(p.name for p in (tmp_path / "logs").glob("vllm-scoring-*.log")) == [
        "vllm-scoring-baseline.log",
        "vllm-scoring-candidate.log",
    ]
    for stage in stages:
        for theirs, mine in zip(served[stage]["metrics"], ours[stage]["metrics"], strict=True):
            assert theirs["name"] == mine["name"] and theirs["verdict"] == mine["verdict"], theirs["name"]
            if "perplexity" in mine["name"] and "growth" not in mine["name"]:
                assert theirs["baseline"] == pytest.approx(mine["baseline"], rel=0.01), mine["name"]
                assert theirs["candidate"] == pytest.approx(mine["candidate"], rel=0.01), mine["name"]
    capitals = {e: reports[e]["stages"]["tasks"]["details"]["world_capitals"]["per_item"] for e in reports}
    for role in ("baseline", "candidate"):
        served_acc, our_acc = capitals["vllm"][role]["acc"], capitals["transformers"][role]["acc"]
        assert sum(a == b for a, b in zip(served_acc, our_acc, strict=True)) / len(our_acc) >= 0.95, role


def test_power_check_shows_which_stage_catches_which_damage(demo, demo_quantized, policy, tmp_path):
    """Every planted damage against the demo's gates (trimmed to a minute): the gross ones are caught
    everywhere, the long-range one by the long-context gate alone, and gates that catch nothing say so."""
    trimmed = policy | {
        "perplexity": policy["perplexity"] | {"general_texts": [], "max_tokens": 1024},
        "tasks": policy["tasks"] | {"tasks": [{"path": str(demo.tasks["world_capitals"])}]},
        "long_context": policy["long_context"] | {"target_tokens": 128},
    }
    layer = "model.layers.0.mlp.down_proj"
    code, report, stderr = validate(
        demo.model_dir, demo_quantized / "awq", [], trimmed, tmp_path, "--power-check", "--damage-layer", layer
    )
    assert code == 0, stderr
    power = report["power_check"]
    verdicts = {d["damage"]: d["verdicts"] for d in power["damages"]}
    everywhere = {"perplexity": "caught", "tasks": "caught", "long_context": "caught"}
    assert (
        verdicts["fewer_levels"] == verdicts["permuted_mlp_scales"] == verdicts["permuted_layer_scales"] == everywhere
    )
    zeroed = next(d for d in power["damages"] if d["damage"] == "zeroed_mlp")  # subtler: +30% perplexity
    assert {"perplexity", "long_context"} <= set(zeroed["caught_by"])
    # Fine at short range, broken at long range: only the long-context gate sees it.
    assert verdicts["long_range_rotary"] == {"perplexity": "missed", "tasks": "missed", "long_context": "caught"}
    rotary = next(d for d in power["damages"] if d["damage"] == "long_range_rotary")
    assert any(r.startswith("perplexity increase at 2048 tokens") for r in rotary["reasons"]["long_context"])
    assert layer in next(d for d in power["damages"] if d["damage"] == "permuted_layer_scales")["description"]
    assert power["caught"] == power["planted"] == 5 and power["blind"] is False

    blind = trimmed | {
        "perplexity": trimmed["perplexity"] | {"max_increase": 1e9},
        "power_check": {"damages": ["zeroed_mlp"], "stages": ["perplexity"]},
    }
    code, report, _ = validate(demo.model_dir, demo_quantized / "awq", [], blind, tmp_path, "--power-check")
    assert code == 1 and report["power_check"]["blind"] is True
    assert report["power_check"]["damages"][0]["verdicts"] == {"perplexity": "missed"}


@pytest.mark.vllm
def test_load_stage_gates_on_the_sla(demo, demo_quantized, policy, tmp_path):
    """On the compressed-tensors checkpoint (rtn/): vLLM serves that format too (AWQ: test_platform)."""
    impossible = policy | {"load": policy["load"] | {"sla": {"ttft_p90_s": 0.0001}}}
    code, report, stderr = validate(demo.model_dir, demo_quantized / "rtn", ["load"], impossible, tmp_path)
    stage = report["stages"]["load"]
    assert code == 1 and stage["passed"] is False, stderr
    assert [r for r in stage["reasons"] if r.startswith("c=1 TTFT p90 s")]
    levels = {int(c): level for c, level in stage["details"]["levels"].items()}
    assert set(levels) == {1, 4} and all(level["errors"] == 0 and level["requests"] == 6 for level in levels.values())
    assert 0 < levels[1]["ttft_s"]["p50"] <= levels[1]["e2e_s"]["p50"] and levels[4]["output_tokens_per_s"] > 0
    # The same measurements pass a realistic SLA.
    assert all(m.passed for m in load_test.sla_metrics(levels, SLA()))
    log = Path(stage["details"]["log"])
    assert "Application startup complete" in log.read_text()
    started = yaml.safe_load(log.with_suffix(".yaml").read_text())  # the --config the server ran
    assert started["quantization"] == "compressed-tensors" and started["max-model-len"] == SERVING["max_model_len"]


@pytest.mark.vllm
def test_server_that_cannot_start_fails_cleanly(demo, demo_quantized, policy, tmp_path):
    broken = SERVING | {"max_model_len": 100000}  # beyond the model's 8192 positions
    code, report, _ = validate(demo.model_dir, demo_quantized / "awq", ["load"], policy, tmp_path, serving=broken)
    stage = report["stages"]["load"]
    assert code == 1 and stage["passed"] is False and "vLLM exited with status" in stage["error"]
    assert Path(stage["details"]["log"]).is_file()
    # nothing left running
    assert subprocess.run(["pgrep", "-f", "vllm.entrypoints.openai.api_server"], capture_output=True).returncode == 1


def test_port_already_in_use_is_a_clear_error(demo, demo_quantized, policy, tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code, _, stderr = validate(
            demo.model_dir,
            demo_quantized / "awq",
            ["load"],
            policy | {"load": policy["load"] | {"port": port}},
            tmp_path,
        )
    assert code == 2 and f"Port {port} on 127.0.0.1 is already in use" in stderr


def test_empty_task_set_is_a_clear_error(demo, demo_quantized, policy, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code, _, stderr = validate(
        demo.model_dir,
        demo_quantized / "awq",
        ["tasks"],
        policy | {"tasks": {"tasks": [{"path": str(empty)}]}},
        tmp_path,
    )
    assert code == 2 and "has no items" in stderr


def serve_dense(demo, log: Path, max_model_len: int):
    """vLLM on the dense demo model, which every CPU build serves, in this host's compute dtype."""
    serving = Serving(dtype=resolve().dtype_name, enforce_eager=True, max_model_len=max_model_len)
    return serve(engine_args(demo.model_dir, "dense", serving, "cpu"), engine_env(serving, "cpu"), log)


def test_load_stage_drives_a_running_endpoint_and_refuses_a_server_that_dies(demo, demo_quantized, policy, tmp_path):
    """load.endpoint: an OpenAI-compatible server that is already running is load-tested in place,
    with no probe and no server of its own. Here it is vLLM on the dense model (any host can serve
    that); in production, a staging deployment of the candidate on the target GPU.

    Then the same server's API process is killed (SIGKILL) while requests stream: what the load test
    measured is refused with that reason, and the engine core the kill orphaned is stopped with it.
    (One test, so that the suite starts vLLM once for both.)"""
    with pytest.raises(ServerError, match=r"vLLM exited with status -9 while it was being load-tested") as failure:
        with serve_dense(demo, tmp_path / "vllm.log", max_model_len=512) as server:
            with urllib.request.urlopen(f"{server.base_url}/v1/models", timeout=10) as reply:
                served = json.loads(reply.read())["data"]
            # vLLM runs the engine arguments of its --config file
            assert [(m["id"], m["max_model_len"]) for m in served] == [("dense", 512)]
            load = policy["load"] | {
                "endpoint": server.base_url,
                "concurrency": [2],
                "requests_per_level": 4,
            }
            code, report, stderr = validate(
                demo.model_dir, demo_quantized / "awq", ["load"], policy | {"load": load}, tmp_path
            )
            stage = report["stages"]["load"]
            assert code == 0 and stage["status"] == "passed", stderr + json.dumps(stage.get("reasons"))
            assert stage["compute"]["server"] == server.base_url and "capability" not in stage["compute"]
            (level,) = stage["details"]["levels"].values()
            assert level["requests"] == 4 and level["errors"] == 0
            assert 0 < level["ttft_s"]["p50"] <= level["e2e_s"]["p50"]

            long_streams = LoadSettings(
                prompt_texts=tuple(demo.domain_eval_texts[:2]),
                concurrency=(2,),
                requests_per_level=4,
                prompt_tokens=32,
                output_tokens=400,  # the kill lands in the middle of them
            )
            threading.Timer(1.5, os.kill, (server.pid, signal.SIGKILL)).start()
            prompts = load_test.make_prompts(demo.model_dir, long_streams)
            (level,) = load_test.drive(server, prompts, long_streams).values()
            assert level["errors"] > 0  # the streams cut by the kill, and the requests after it
            server.check_alive(wait_s=10.0)
    assert str(tmp_path / "vllm.log") in str(failure.value)
    # nothing left running: not the API server, not its engine core
    assert subprocess.run(["pgrep", "-f", "vllm.entrypoints.openai.api_server"], capture_output=True).returncode == 1
    assert subprocess.run(["pgrep", "-f", "EngineCore"], capture_output=True).returncode == 1


def test_endpoint_that_does_not_answer_fails_the_stage(demo, demo_quantized, policy, tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    code, report, _ = validate(
        demo.model_dir,
        demo_quantized / "awq",
        ["load"],
        policy | {"load": policy["load"] | {"endpoint": url}},
        tmp_path,
    )
    stage = report["stages"]["load"]
    assert (
        code == 1 and stage["status"] == "failed" and f"No OpenAI-compatible server answers at {url}" in stage["error"]
    )


def test_server_that_cannot_start_is_stopped_with_its_log(demo, tmp_path):
    with pytest.raises(ServerError, match="vLLM exited with status") as failure:
        with serve_dense(demo, tmp_path / "vllm.log", max_model_len=100000):  # beyond the model's 8192 positions
            pass
    assert str(tmp_path / "vllm.log") in str(failure.value) and (tmp_path / "vllm.log").is_file()
    # nothing left running
    assert subprocess.run(["pgrep", "-f", "vllm.entrypoints.openai.api_server"], capture_output=True).returncode == 1

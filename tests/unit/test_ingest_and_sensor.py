"""The sensor's choice of checkpoints, and ingest's checks: LoRA merge, footprint, hostile names."""

import dataclasses
import json
import logging
import re
import shutil

import dagster as dg
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from awq_core.checkpoint import CheckpointFolder
from awq_release.errors import CheckpointError, UnsupportedArchitecture
from deploy.registry import safe_name
from orchestrator.definitions import build_definitions
from orchestrator.lineage.queries import attempt_statuses, end_attempt, start_attempt
from orchestrator.pipeline.attempts import next_attempt
from orchestrator.pipeline.resources import LineageDatabase
from orchestrator.pipeline.sensors import checkpoint_sensor, scan
from orchestrator.release import hashing
from orchestrator.release.hashing import content_hash, stat_signature
from orchestrator.release.ingest import ingest, tensor_parallel_size
from orchestrator.release.policy import ReleasePolicy, TargetGPU
from tests.conftest import RELEASE_ASSETS, make_tiny_model, platform_under

log = logging.getLogger("test")


def test_definitions_load():
    defs = build_definitions()
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert keys == RELEASE_ASSETS
    job = defs.resolve_job_def("release_job")
    assert job.partitions_def is not None and defs.resolve_sensor_def("checkpoint_sensor").job_name == "release_job"
    checks = {c.name for c in defs.resolve_asset_graph().asset_check_keys}
    assert checks == {"perplexity_gate", "tasks_gate", "long_context_gate", "load_gate"}


def write(folder, files: dict[str, str]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_sensor_requests_exactly_one_run(tmp_path, monkeypatch):
    watched = tmp_path / "checkpoints"
    write(watched / "complete model", {"config.json": "{}", "model-00001-of-00002.safetensors": "x" * 100})
    with (watched / "complete model" / "model-00002-of-00002.safetensors").open("wb") as f:
        f.truncate(64 * 2**30)  # a sparse 64 GiB shard: a tick must never read it
    write(watched / "half-written", {"config.json": "{}"})
    write(watched / "seen-before", {"config.json": "{}", "model.safetensors": "y"})
    write(watched / ".copy-in-progress", {"config.json": "{}"})
    platform = platform_under(tmp_path)  # watched: its checkpoints/
    lineage = LineageDatabase(url=f"sqlite:///{tmp_path / 'lineage.db'}")
    engine = lineage.engine()
    start_attempt(engine, "earlier-run", "seen-before", stat_signature(watched / "seen-before"))
    end_attempt(engine, "earlier-run", "released", "bot v0001")

    def no_byte_read(*args):
        raise AssertionError("a sensor tick read a file's bytes")

    monkeypatch.setattr(hashing, "_update", no_byte_read)
    resources = {"platform": platform, "lineage": lineage}
    with dg.instance_for_test() as instance:
        first = checkpoint_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert first.run_requests == []  # nothing has been stable for two ticks yet
        (watched / "half-written" / "model.safetensors").write_text("still copying")
        second = checkpoint_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=resources))
    (request,) = second.run_requests  # not seen-before: released before
    key = safe_name("complete model")  # a readable slug and the name's hash: no other name maps there
    assert request.partition_key == key and key.startswith("complete-model--")
    assert request.run_key == f"{stat_signature(watched / 'complete model')}:1"
    assert [r.partition_keys for r in second.dynamic_partitions_requests] == [[key]]
    statuses = lambda source: attempt_statuses(engine, source)  # noqa: E731
    third_requests, _, _ = scan(watched, json.loads(second.cursor), {key}, statuses, 3, log)
    assert [r.partition_key for r in third_requests] == ["half-written"]  # stable now; the first is not requested again


def test_failed_and_killed_attempts_are_retried_up_to_the_policy_limit(tmp_path):
    watched = tmp_path / "checkpoints"
    write(watched / "bot", {"config.json": "{}"})
    engine = LineageDatabase(url=f"sqlite:///{tmp_path / 'lineage.db'}").engine()
    source = stat_signature(watched / "bot")
    cursor = {"signatures": {"bot": source}}
    keys = []
    for attempt, ending in enumerate(("failed", "killed", "failed"), start=1):
        requests, _, cursor = scan(watched, cursor, {"bot"}, lambda s: attempt_statuses(engine, s), 3, log)
        keys += [r.run_key for r in requests]
        start_attempt(engine, f"run-{attempt}", "bot", source)
        end_attempt(engine, f"run-{attempt}", ending, "out of memory")
    assert keys == [f"{source}:1", f"{source}:2", f"{source}:3"]
    assert scan(watched, cursor, {"bot"}, lambda s: attempt_statuses(engine, s), 3, log)[0] == []  # 3 is the limit
    assert next_attempt(["failed", "killed", "failed"], 4) == 4
    assert "rejected by its gates" in next_attempt(["failed", "rejected"], 5)
    assert next_attempt(["running"], 5) == "an attempt is running"
    assert next_attempt(["released"], 5) == "released before"


@pytest.mark.parametrize(
    "name, readable",
    [
        ("my model v2", "my-model-v2--"),
        ("fine..tune", "fine-tune--"),
        ("modèle-ünïcode", "modele-unicode--"),
        ("..", "model--"),
        ("🤖", "model--"),
        ("support-bot_v2.1", "support-bot_v2.1"),  # safe already: kept as it is
    ],
)
def test_hostile_names_become_safe_partition_keys(name, readable):
    key = safe_name(name)
    assert key.startswith(readable) and len(key) == len(readable) + (8 if readable.endswith("--") else 0)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", key) and ".." not in key and not key.startswith(".")


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory, tiny_llama):
    """A real LoRA adapter trained for tiny_llama (one update, so it changes the weights)."""
    root = tmp_path_factory.mktemp("lora")
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.peft_config["default"].base_model_name_or_path = "tiny-base"
    peft_model.save_pretrained(root / "adapter")
    return root / "adapter"


def test_lora_adapter_is_merged_into_its_base(tmp_path, tiny_llama, lora_adapter):
    found = ingest(lora_adapter, tmp_path, ReleasePolicy(base_models={"tiny-base": tiny_llama}))
    assert found.adapter_path == str(lora_adapter) and found.base_model == "tiny-base"
    merged = {}
    for shard in found.model_dir.glob("*.safetensors"):
        merged |= load_file(shard)
    base = load_file(tiny_llama / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[key].float(), base[key].float())  # the adapter's update is in
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert (found.model_dir / "tokenizer.json").is_file()


def test_a_lora_adapters_identity_covers_its_base(tmp_path, tiny_llama, lora_adapter, tokenizer_dir):
    """The same adapter on the same base is the same checkpoint (its quantization and figures found
    again); on a base folder whose weights changed under the same name it is another one."""
    policy = ReleasePolicy(base_models={"tiny-base": tiny_llama})
    first, again = (ingest(lora_adapter, tmp_path / name, policy) for name in ("first", "again"))
    retrained = make_tiny_model(tmp_path / "retrained", tokenizer_dir, seed=1)  # same shapes, other weights
    other = ingest(lora_adapter, tmp_path / "other", ReleasePolicy(base_models={"tiny-base": retrained}))
    known = ingest(lora_adapter, tmp_path / "known", policy, known_hash=first.content_hash)
    assert first.content_hash == again.content_hash == known.content_hash
    assert other.content_hash != first.content_hash
    other_known = ingest(
        lora_adapter,
        tmp_path / "other-known",
        ReleasePolicy(base_models={"tiny-base": retrained}),
        known_hash=first.content_hash,
    )
    assert (
        other_known.content_hash == other.content_hash
    )  # an earlier attempt's hash of the adapter folder is not taken


def test_lora_adapter_for_another_base_is_refused(tmp_path, tokenizer_dir, lora_adapter):
    other = make_tiny_model(tmp_path / "other", tokenizer_dir, hidden=96)  # its projections have other shapes
    with pytest.raises(CheckpointError, match="which the policy does not name"):
        ingest(lora_adapter, tmp_path, ReleasePolicy())
    with pytest.raises(CheckpointError, match="does not fit base model 'tiny-base'.*trained for another base"):
        ingest(lora_adapter, tmp_path, ReleasePolicy(base_models={"tiny-base": other}))
    assert not (tmp_path / "merged").exists()


def test_footprint_counts_linears_at_4_bits_and_the_rest_at_16(tmp_path, tiny_llama):
    found = ingest(tiny_llama, tmp_path, ReleasePolicy())
    tensors = load_file(tiny_llama / "model.safetensors")
    linear = sum(t.numel() for name, t in tensors.items() if name.endswith("_proj.weight"))
    rest = sum(t.numel() for t in tensors.values()) - linear
    group = ReleasePolicy().quantization.group_size  # each group adds a 16-bit scale and a packed zero
    assert found.footprint["weights_gib"] * 2**30 == pytest.approx(linear * (0.5 + 2.5 / group) + rest * 2)
    assert found.footprint["fits"] and found.footprint["tensor_parallel_size"] == 1


def test_tensor_parallelism_is_the_least_that_fits_and_divides_the_heads():
    assert tensor_parallel_size(need_bytes=10, usable_per_gpu=3, heads=32, least=1, per_node=8) == 4
    assert tensor_parallel_size(need_bytes=10, usable_per_gpu=3, heads=32, least=1, per_node=2) is None
    assert tensor_parallel_size(need_bytes=10, usable_per_gpu=3, heads=9, least=1, per_node=8) is None  # SmolLM2
    assert tensor_parallel_size(need_bytes=1, usable_per_gpu=3, heads=32, least=2, per_node=8) == 2  # the policy's
    assert tensor_parallel_size(need_bytes=5, usable_per_gpu=3, heads=32, least=2, per_node=1) == 2  # it has 2 GPUs


def test_ingest_serves_on_two_gpus_what_one_cannot_hold(tmp_path, tokenizer_dir):
    tiny = make_tiny_model(tmp_path / "tiny", tokenizer_dir)  # 4 attention heads
    fit = ingest(tiny, tmp_path, ReleasePolicy()).footprint
    need_gib = fit["weights_gib"] + fit["kv_cache_gib"]
    small = TargetGPU(name="small", memory_gib=0.6 * need_gib / 0.9, per_node=4)  # holds 0.6 of the model
    fit = ingest(tiny, tmp_path, ReleasePolicy(target_gpu=small)).footprint
    assert fit["fits"] and fit["tensor_parallel_size"] == 2
    assert fit["usable_gib"] == pytest.approx(2 * 0.6 * need_gib)
    with pytest.raises(CheckpointError, match=r"usable on 1 of the target GPU \(small\).*per_node"):
        ingest(tiny, tmp_path, ReleasePolicy(target_gpu=dataclasses.replace(small, per_node=1)))


def test_ingest_refuses_what_quantize_refuses(tmp_path, tokenizer_dir):
    bad = make_tiny_model(tmp_path / "bad", tokenizer_dir)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(config | {"architectures": ["GPTNeoXForCausalLM"]}))
    with pytest.raises(UnsupportedArchitecture, match="Supported: Gemma3ForCausalLM, LlamaForCausalLM"):
        ingest(bad, tmp_path, ReleasePolicy())


def test_unreachable_database_fails_the_run_and_writes_nothing(tmp_path, tiny_llama):
    from deploy.server import free_port
    from orchestrator.pipeline.assets import checkpoint
    from orchestrator.pipeline.partitions import CHECKPOINTS
    from orchestrator.pipeline.resources import LineageDatabase

    shutil.copytree(tiny_llama, tmp_path / "checkpoints" / "tiny")
    (tmp_path / "policy.yaml").write_text("{}\n")
    platform = platform_under(tmp_path)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(CHECKPOINTS.name, ["tiny"])
        result = dg.materialize(
            [checkpoint],
            partition_key="tiny",
            instance=instance,
            raise_on_error=False,
            resources={
                "platform": platform,
                "lineage": LineageDatabase(url=f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/lineage"),
            },
        )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.to_string()  # with its cause chain
    assert "The lineage database at postgresql+psycopg://nobody@127.0.0.1" in message and "unreachable" in message
    assert not (tmp_path / "registry").exists()


def test_ingest_reads_the_weights_once_for_hash_and_finite_check(tmp_path, tiny_llama, monkeypatch):
    model = shutil.copytree(tiny_llama, tmp_path / "model")
    monkeypatch.setattr(hashing, "CHUNK", 999)  # odd chunks: values of every dtype straddle them
    monkeypatch.setattr(CheckpointFolder, "check_finite", lambda self: pytest.fail("the weights were read twice"))
    found = ingest(model, tmp_path / "work", ReleasePolicy())
    assert found.content_hash == content_hash(model)  # the hash is the same as a plain read's
    tensors = load_file(model / "model.safetensors")
    tensors["model.layers.1.self_attn.o_proj.weight"][7, 3] = float("nan")
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model.layers.1.self_attn.o_proj.weight holds 1 NaN/Inf"):
        ingest(model, tmp_path / "work", ReleasePolicy())

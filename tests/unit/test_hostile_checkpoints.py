"""A checkpoint is untrusted input: nothing in it runs, nothing it names outside its folder is read,
and nothing it does harms another checkpoint or release (issue 30's findings, one test or more each).
The property-based tests generate malformed headers, index files and configs and require one
`error:` line, exit 2 and nothing written, from the CLI run in process."""

import io
import json
import logging
import math
import re
import shutil
import struct
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from awq_core.checkpoint import CheckpointFolder, load_tokenizer
from awq_release.errors import CheckpointError, ReleaseError, ValidationError
from deploy.engine import Serving, engine_args
from deploy.registry import model_root, publish, safe_name, versions_on_disk
from deploy.server import log_tail
from orchestrator.cli.main import _print_history
from orchestrator.lineage import session_scope, upgrade
from orchestrator.lineage.models import QuantizationRun, Release
from orchestrator.lineage.queries import record_release, record_stage
from orchestrator.lineage.releases import history
from orchestrator.pipeline.sensors import scan
from orchestrator.release.ingest import ingest
from orchestrator.release.policy import ReleasePolicy, parse_policy
from orchestrator.release.promotion import reconcile
from tests.conftest import add_lineage
from tests.unit.test_bad_input import assert_refused, run_quantize
from validation.result import StageResult, gate

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def model_copy(tmp_path, tiny_llama) -> Path:
    return Path(shutil.copytree(tiny_llama, tmp_path / "model"))


def fresh_copy(tiny_llama: Path, root: Path) -> Path:
    """A new copy for each generated example (hypothesis reuses a test's function-scoped fixtures)."""
    shutil.rmtree(root, ignore_errors=True)
    return Path(shutil.copytree(tiny_llama, root / "model"))


def assert_refused_naming(result, out_dir: Path, file_name: str) -> None:
    assert_refused(result, out_dir, file_name)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# 1. Checkpoint code never runs, not even through the tokenizer with a "y" on standard input.


def plant_tokenizer_code(folder: Path, marker: Path) -> None:
    (folder / "tokenization_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    auto_map = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"auto_map": auto_map}))


def test_tokenizer_code_is_refused_at_ingest_and_never_runs(tmp_path, model_copy, monkeypatch):
    marker = tmp_path / "ran"
    plant_tokenizer_code(model_copy, marker)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\ny\n"))  # a careless operator's answer
    with pytest.raises(CheckpointError, match="Python code"):
        ingest(model_copy, tmp_path / "work", ReleasePolicy())
    with pytest.raises(CheckpointError, match="Python code"):
        load_tokenizer(model_copy)
    (model_copy / "tokenization_evil.py").unlink()  # the auto_map alone is refused too
    with pytest.raises(CheckpointError, match="tokenizer_config.json names custom code"):
        load_tokenizer(model_copy)
    assert not marker.exists()


# 2. Every file a checkpoint names lies inside it; a linked checkpoint folder is refused.


def write_index(folder: Path, shard: str) -> None:
    names = CheckpointFolder(folder).tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(names, shard)}))


@pytest.mark.parametrize("shard", ["../other-team/model.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_index_entries_outside_the_folder_are_refused_unread(tmp_path, model_copy, calib_file, shard):
    other = tmp_path / "other-team"
    other.mkdir()
    shutil.copy(model_copy / "model.safetensors", other / "model.safetensors")
    write_index(model_copy, shard)
    result = run_quantize(model_copy, tmp_path / "out", [calib_file])
    assert_refused_naming(result, tmp_path / "out", "outside")
    assert str(Path("/etc/passwd").stat().st_size) not in result.stderr  # nothing about the file is told


def test_a_linked_checkpoint_folder_is_refused(tmp_path, model_copy, calib_file):
    watched = tmp_path / "checkpoints"
    watched.mkdir()
    (watched / "decoy").symlink_to(model_copy, target_is_directory=True)
    result = run_quantize(watched / "decoy", tmp_path / "out", [calib_file])
    assert_refused_naming(result, tmp_path / "out", "is a link to")
    with pytest.raises(CheckpointError, match="cp -rL"):
        ingest(watched / "decoy", tmp_path / "work", ReleasePolicy())


def test_a_lora_adapter_cannot_name_a_base_the_policy_does_not(tmp_path, tiny_llama):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_llama)}))
    with pytest.raises(CheckpointError, match="which the policy does not name"):
        ingest(adapter, tmp_path / "work", ReleasePolicy())


# 3. Distinct model names never share a registry folder, and repair never deletes a recorded release.


def test_names_that_slug_alike_get_their_own_folders():
    names = ["Support Bot", "Support-Bot", "support bot", "support_bot", "サポート", "サービス", "..", "🤖"]
    folders = [safe_name(n) for n in names]
    assert len(set(folders)) == len(names)
    assert safe_name("Support-Bot") == "Support-Bot" and safe_name("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert safe_name("Support Bot").startswith("Support-Bot--") and safe_name("サポート").startswith("model--")
    assert all("/" not in f and not f.startswith(".") and len(f) <= 74 for f in folders)


def test_repair_never_withdraws_a_release_the_database_records(tmp_path):
    """Two names reaching one folder (as the old slug let "Support Bot" and "Support-Bot" do): the
    second model's repair finds the first one's promoted release there and leaves it."""
    engine = upgrade(f"sqlite:///{tmp_path / 'lineage.db'}")
    registry, model_dir = tmp_path / "registry", tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    run_id = add_lineage(engine, "a")
    with session_scope(engine) as session:
        checkpoint_id = session.get(QuantizationRun, run_id).checkpoint_id
        row = record_release(session, "first", "promoted", checkpoint_id, run_id, {})
        row.path = str(publish(registry, "first", row.version, model_dir, {}, "# card", Serving()))
        release_id = row.id
    shared = model_root(registry, "second")  # where the second name's releases live
    shutil.rmtree(shared, ignore_errors=True)
    shutil.copytree(model_root(registry, "first"), shared, symlinks=True)
    with session_scope(engine) as session:  # the first model's record now names the shared folder
        session.get(Release, release_id).path = str(shared / "releases" / "v0001")
    assert reconcile(engine, registry, "second") == []
    assert versions_on_disk(registry, "second") == ["v0001"]


# 4. One checkpoint's bad name never blocks another in the same watched folder.


def test_a_folder_named_without_latin_letters_is_taken_like_any_other(tmp_path):
    watched = tmp_path / "checkpoints"
    for name in ("チーム-モデル", "🤖🤖", "support-bot"):
        (watched / name).mkdir(parents=True)
        (watched / name / "config.json").write_text("{}")
    log = logging.getLogger("test")
    _, _, cursor = scan(watched, {}, set(), lambda source: [], 3, log)  # first tick: seen
    requests, keys, _ = scan(watched, cursor, set(), lambda source: [], 3, log)  # unchanged: taken
    assert len(requests) == 3 and len(set(keys)) == 3 and "support-bot" in keys


# 5. The config is checked against the weights.


@pytest.mark.parametrize(
    "change, phrase",
    [
        ({"num_hidden_layers": 0}, "num_hidden_layers=0"),
        ({"num_hidden_layers": -1}, "num_hidden_layers=-1"),
        ({"num_hidden_layers": 1}, "decoder layer 1"),
        ({"hidden_size": 10**9}, "does not belong to these weights"),
        ({"num_attention_heads": 0}, "num_attention_heads=0"),
        ({"vocab_size": "many"}, "vocab_size='many'"),
        ({"model_type": "no-such-model"}, "config.json"),
    ],
)
def test_an_impossible_config_is_refused(tmp_path, model_copy, calib_file, change, phrase):
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps(config | change))
    assert_refused_naming(run_quantize(model_copy, tmp_path / "out", [calib_file]), tmp_path / "out", phrase)


# 6. Malformed input of every kind: one error line naming the file, exit 2, nothing written.

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def rewrite_header(path: Path, edit) -> None:
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    text = json.dumps(edit(header)).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + header_len :])


ENTRY_DAMAGE = st.one_of(
    st.builds(lambda v: ("replace", v), JSON_VALUES),  # the entry is any JSON value
    st.builds(lambda k, v: ("field", k, v), st.sampled_from(["dtype", "shape", "data_offsets"]), JSON_VALUES),
    st.builds(lambda k: ("drop", k), st.sampled_from(["dtype", "shape", "data_offsets"])),
    st.builds(
        lambda a, b: ("field", "data_offsets", [a, b]), st.integers(-(2**33), 2**33), st.integers(-(2**33), 2**33)
    ),
    st.builds(lambda d: ("field", "dtype", d), st.sampled_from(["I32", "I8", "U8", "BOOL", "F8_E4M3", "Q4"])),
)


def damaged(header: dict, name: str, damage: tuple) -> dict:
    if damage[0] == "replace":
        header[name] = damage[1]
    elif damage[0] == "field":
        header[name][damage[1]] = damage[2]
    else:
        header[name].pop(damage[1])
    return header


@FUZZ
@given(damage=ENTRY_DAMAGE, which=st.sampled_from(["model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight"]))
def test_fuzzed_safetensors_headers(tmp_path, tiny_llama, calib_file, damage, which):
    model = fresh_copy(tiny_llama, tmp_path / "fuzz")
    rewrite_header(model / "model.safetensors", lambda header: damaged(header, which, damage))
    result = run_quantize(model, tmp_path / "fuzz" / "out", [calib_file])
    if result.returncode != 0:  # some damage is harmless (an unused field): then it must quantize
        assert_refused(result, tmp_path / "fuzz" / "out")
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@FUZZ
@given(index=JSON_VALUES | st.builds(lambda m: {"weight_map": m}, JSON_VALUES))
def test_fuzzed_index_files(tmp_path, tiny_llama, calib_file, index):
    model = fresh_copy(tiny_llama, tmp_path / "fuzz")
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    result = run_quantize(model, tmp_path / "fuzz" / "out", [calib_file])
    if result.returncode != 0:  # an index that names the one real shard is a valid index
        assert_refused_naming(result, tmp_path / "fuzz" / "out", "model.safetensors.index.json")


CONFIG_KEYS = ["num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size"]


@FUZZ
@given(key=st.sampled_from(CONFIG_KEYS), value=JSON_VALUES)
def test_fuzzed_config_values(tmp_path, tiny_llama, calib_file, key, value):
    model = fresh_copy(tiny_llama, tmp_path / "fuzz")
    config = json.loads((model / "config.json").read_text())
    if config.get(key) == value:
        return
    (model / "config.json").write_text(json.dumps(config | {key: value}))
    result = run_quantize(model, tmp_path / "fuzz" / "out", [calib_file])
    assert_refused_naming(result, tmp_path / "fuzz" / "out", "config")


# 6, the policy: every value is checked when the policy is read, before any step runs.


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("calibration: {n_samples: -4}", "calibration.n_samples: expected a finite number of at least 0, got -4"),
        ("calibration: {n_samples: 0}", "n_samples=0"),
        ("calibration: {n_samples: 100000000, seqlen: 512}", "at most 16777216 tokens"),
        ("validation: {perplexity: {max_increase: .nan}}", "validation.perplexity.max_increase: expected a finite"),
        ("validation: {load: {sla: {ttft_p90_s: -1}}}", "ttft_p90_s: expected a finite number of at least 0"),
        ("model_name: '   '", "model_name='   '"),
        ('model_name: "bot\\u0000"', "printable characters"),
    ],
)
def test_bad_policy_values_fail_where_the_policy_is_read(text, phrase):
    with pytest.raises(ValidationError, match=re.escape(phrase)):
        parse_policy(text, "policy.yaml")


def test_any_script_names_a_model():
    assert parse_policy("model_name: サポートボット", "policy.yaml").model_name == "サポートボット"


POLICY_FIELDS = st.sampled_from(
    [
        ("model_name",),
        ("max_attempts",),
        ("calibration", "n_samples"),
        ("calibration", "seqlen"),
        ("quantization", "group_size"),
        ("serving", "max_model_len"),
        ("validation", "perplexity", "max_increase"),
        ("validation", "tasks", "max_drop"),
        ("validation", "evidence", "confidence"),
    ]
)
NUMBERS = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70)


@settings(max_examples=200, deadline=None)
@given(path=POLICY_FIELDS, value=JSON_VALUES | NUMBERS)
def test_fuzzed_policies_parse_or_refuse_in_one_line(path, value):
    """Whatever a policy holds, reading it either gives settings every step can use or one
    ReleaseError (the CLI's `error:` line), never another exception."""
    data = value
    for key in reversed(path):
        data = {key: data}
    try:
        policy = parse_policy(yaml.safe_dump(data), "policy.yaml")
    except ReleaseError as e:
        assert "\n" not in str(e)
        return
    assert policy.calibration.n_samples >= 1 and math.isfinite(policy.validation.perplexity.max_increase)


# 7, the smaller points.


def test_a_failed_stage_without_gates_is_not_shown_as_passed(tmp_path, capsys):
    engine = upgrade(f"sqlite:///{tmp_path / 'lineage.db'}")
    run_id = add_lineage(engine, "a")
    gate_result = StageResult("perplexity", [gate("domain perplexity increase", 10.0, 10.5, 0.05, 0.15)])
    record_stage(engine, run_id, gate_result, "/p.json")
    record_stage(engine, run_id, StageResult("load", [], error="vLLM exited with status 1"), "/l.json")
    with session_scope(engine) as session:
        checkpoint_id = session.get(QuantizationRun, run_id).checkpoint_id
        record_release(session, "bot", "rejected", checkpoint_id, run_id, {})
    _print_history(history(engine))
    line = capsys.readouterr().out.splitlines()[1]
    assert "1/1 passed; failed: load (vLLM exited with status 1)" in line


def test_a_server_error_names_the_workers_exception_not_only_the_log_tail(tmp_path):
    log = tmp_path / "vllm.log"
    worker = "AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'"
    log.write_text("\n".join(["INFO starting", "Traceback (most recent call last):", worker, *["INFO shutdown"] * 50]))
    excerpt = log_tail(log)
    assert excerpt.splitlines()[0] == f"first exception: {worker}" and excerpt.endswith("INFO shutdown")


def test_the_shipped_engine_arguments_listen_on_this_host_unless_told(tmp_path, tiny_llama):
    assert engine_args(tiny_llama, "bot", Serving(), "gpu")["host"] == "127.0.0.1"
    assert parse_policy("serving: {host: 0.0.0.0}", "policy.yaml").serving.host == "0.0.0.0"

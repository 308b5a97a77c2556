"""AWQ end to end on tiny random models of every supported architecture."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import awq_core.quantizer as quantizer_module
from awq_core import QuantConfig, build_calibration, quantize
from awq_core.architectures import ARCHITECTURES
from awq_core.block import _apply_scales, _shares_shape
from awq_core.checkpoint import CheckpointFolder
from awq_core.compute import Resolved, resolve
from awq_core.config import GPTQ_MIN_TOKENS
from awq_core.loader import load_quantized
from awq_core.model import (
    block_kwargs,
    embed,
    layer_types,
    materialize_block,
    meta_model,
    rotary_embedding,
    run_block,
)
from awq_core.packing import LAYOUTS
from awq_core.quant import dequantize_groups
from tests.conftest import FAST, make_tiny_model

CPU_FP32 = Resolved(torch.device("cpu"), torch.float32, "test")


@pytest.fixture(scope="module")
def calib(tiny_llama, calib_file):
    return build_calibration(AutoTokenizer.from_pretrained(tiny_llama), [calib_file], n_samples=8, seqlen=128)


@pytest.fixture(scope="module")
def held_out(tiny_llama, held_out_file):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    return tokenizer(held_out_file.read_text(), return_tensors="pt")["input_ids"][:, :256]


def logits_mse(model_dir, quantized_dir, ids) -> float:
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve().dtype)(ids).logits.float()
        return (load_quantized(quantized_dir)(ids).logits.float() - reference).pow(2).mean().item()


def block_inputs(model_dir, architecture: str, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each block's input and the last block's output, computed as the quantizer computes them."""
    model, config = meta_model(model_dir, torch.float32)
    arch = ARCHITECTURES[architecture]
    ckpt = CheckpointFolder(model_dir)
    rotary = rotary_embedding(model, arch, config)
    hidden = embed(ids, ckpt.get(f"{arch.embed}.weight"), arch, config, torch.float32)
    inputs = []
    for i, layer_type in enumerate(layer_types(config)):
        inputs.append(hidden)
        block = materialize_block(model, arch, i, ckpt.load_prefix(f"{arch.layers}.{i}."), CPU_FP32)
        hidden = run_block(block, hidden, block_kwargs(rotary, arch, config, layer_type, ids.shape[1], CPU_FP32))
    return inputs, hidden


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Gemma3ForCausalLM"])
def test_blocks_run_as_in_the_model(tmp_path, tokenizer_dir, architecture):
    """Embedding scale, per-type rotary bases and the sliding window (32 tokens of 64 in the Gemma model) as the
    model itself computes them: what the searches measure is what the model computes."""
    model_dir = make_tiny_model(tmp_path / "model", tokenizer_dir, architecture)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    ids = torch.randint(0, vocab, (2, 64))
    inputs, last = block_inputs(model_dir, architecture, ids)
    with torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
        states = model(ids, output_hidden_states=True).hidden_states
    for ours, theirs in zip(inputs, states, strict=False):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    final_norm = model.model.norm
    torch.testing.assert_close(final_norm(last), states[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Gemma3ForCausalLM"])
def test_scale_folding_keeps_the_block_function(tmp_path, tokenizer_dir, architecture):
    model_dir = make_tiny_model(tmp_path / "model", tokenizer_dir, architecture)
    arch = ARCHITECTURES[architecture]
    model, config = meta_model(model_dir, torch.float32)
    block = materialize_block(model, arch, 0, CheckpointFolder(model_dir).load_prefix("model.layers.0."), CPU_FP32)
    kwargs = block_kwargs(rotary_embedding(model, arch, config), arch, config, "full_attention", 16, CPU_FP32)
    x = torch.randn(2, 16, config.hidden_size)
    before = run_block(block, x, kwargs)
    torch.manual_seed(0)
    for group in arch.groups:  # norm-preceded groups ((1 + w) norms in Gemma) and linear-preceded ones
        if _shares_shape(block, group):
            _apply_scales(block, arch, group, torch.rand(block.get_submodule(group.linears[0]).in_features) + 0.5)
    torch.testing.assert_close(run_block(block, x, kwargs), before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "architecture, kv_heads",
    [
        ("LlamaForCausalLM", 4),
        ("LlamaForCausalLM", 2),
        ("MistralForCausalLM", 2),
        ("Qwen2ForCausalLM", 2),
        ("Qwen3ForCausalLM", 2),
        ("Gemma3ForCausalLM", 2),
    ],
)
def test_awq_beats_round_to_nearest(tmp_path, tokenizer_dir, calib, held_out, architecture, kv_heads):
    model_dir = make_tiny_model(tmp_path / "model", tokenizer_dir, architecture, kv_heads=kv_heads, seed=1)
    awq = quantize(model_dir, tmp_path / "awq", calib, QuantConfig(**FAST), progress=False)
    quantize(model_dir, tmp_path / "rtn", calib, QuantConfig(method="rtn", **FAST), progress=False)

    config = json.loads((tmp_path / "awq" / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "awq",
        "bits": 4,
        "group_size": 32,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": ["lm_head"],
    }
    assert (tmp_path / "awq" / "tokenizer.json").is_file() and (tmp_path / "awq" / "chat_template.jinja").is_file()
    tensors = {}
    for shard in (tmp_path / "awq").glob("*.safetensors"):
        tensors |= load_file(shard)
    index = json.loads((tmp_path / "awq" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    assert "lm_head.weight" not in tensors and "model.layers.0.self_attn.q_proj.weight" not in tensors
    assert tensors["model.layers.1.mlp.down_proj.qweight"].shape == (256, 128 // 8)  # (in, out / 8)
    assert tensors["model.layers.1.mlp.down_proj.scales"].shape == (256 // 32, 128)
    if architecture == "Qwen2ForCausalLM":
        assert "model.layers.0.self_attn.q_proj.bias" in tensors

    report = json.loads((tmp_path / "awq" / "quant_report.json").read_text())
    assert len(report["layers"]) == 2 * 7 and len(report["block_mse"]) == 2
    scaled = {row["linear"]: row["scaled"] for row in report["layers"]}
    assert scaled["self_attn.o_proj"] == (kv_heads == 4)  # GQA skips v_proj -> o_proj
    assert all(row["group_mse_awq"] <= row["group_mse_rtn"] for row in report["layers"] if row["scaled"])
    assert awq.resumed_blocks == 0 and awq.peak_rss_mb >= awq.start_rss_mb > 0

    assert logits_mse(model_dir, tmp_path / "awq", held_out) < logits_mse(model_dir, tmp_path / "rtn", held_out)


def interrupt_after_first_block(monkeypatch, model_dir, out_dir, calib, config) -> None:
    """Run quantize() and kill it (as a KeyboardInterrupt) when it starts the second block."""
    real_block = quantizer_module.quantize_block
    calls = []

    def dies_on_second_block(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_block(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(quantizer_module, "quantize_block", dies_on_second_block)
        with pytest.raises(KeyboardInterrupt):
            quantize(model_dir, out_dir, calib, config, progress=False)
    assert not out_dir.exists() and (out_dir.parent / f".{out_dir.name}.partial").is_dir()


@pytest.mark.parametrize(("fmt", "fit_original"), [("awq", False), ("compressed-tensors", False), ("awq", True)])
def test_interrupted_run_resumes_at_first_unfinished_block(tmp_path, tiny_llama, calib, monkeypatch, fmt, fit_original):
    """Bit for bit as an uninterrupted run; fitting to the original model, the resumed run computes
    the original model's stream again for the blocks it reuses."""
    config = QuantConfig(**FAST, format=fmt, gptq=fit_original, fit_original=fit_original)
    interrupt_after_first_block(monkeypatch, tiny_llama, tmp_path / "out", calib, config)
    resumed = quantize(tiny_llama, tmp_path / "out", calib, config, progress=False)
    assert resumed.resumed_blocks == 1 and not (tmp_path / ".out.partial").exists()
    fresh = quantize(tiny_llama, tmp_path / "fresh", calib, config, progress=False)
    assert fresh.resumed_blocks == 0
    for shard in (tmp_path / "fresh").glob("*.safetensors"):
        expected, got = load_file(shard), load_file(tmp_path / "out" / shard.name)
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize("change", ["settings", "calibration"])
def test_partial_run_from_other_inputs_is_discarded(tmp_path, tiny_llama, calib, monkeypatch, change):
    interrupt_after_first_block(monkeypatch, tiny_llama, tmp_path / "out", calib, QuantConfig(**FAST))
    config = QuantConfig(**(FAST | {"group_size": 64})) if change == "settings" else QuantConfig(**FAST)
    report = quantize(
        tiny_llama, tmp_path / "out", calib if change == "settings" else calib[:, :64], config, progress=False
    )
    assert report.resumed_blocks == 0


def test_gptq_auto_is_on_from_enough_calibration_tokens(tmp_path, tiny_llama, calib_file):
    """The default runs GPTQ exactly as gptq: true does once the calibration set is large enough, and
    the report says which way it went and why."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    enough = build_calibration(tokenizer, [calib_file], n_samples=GPTQ_MIN_TOKENS // 512, seqlen=512)
    runs = {
        "auto, enough": (enough, QuantConfig(**FAST)),
        "auto, too few": (enough[:-1], QuantConfig(**FAST)),
        "explicit": (enough, QuantConfig(**FAST, gptq=True)),
    }
    reports = {
        name: quantize(tiny_llama, tmp_path / name, ids, config, progress=False) for name, (ids, config) in runs.items()
    }
    decided = {name: (r.config["gptq"], r.config["gptq_why"]) for name, r in reports.items()}
    assert decided == {
        "auto, enough": (True, f"auto: {GPTQ_MIN_TOKENS} calibration tokens, at least {GPTQ_MIN_TOKENS}"),
        "auto, too few": (False, f"auto: {GPTQ_MIN_TOKENS - 512} calibration tokens, fewer than {GPTQ_MIN_TOKENS}"),
        "explicit": (True, "set explicitly"),
    }
    shard = "model-00001-of-00003.safetensors"
    auto, explicit = (load_file(tmp_path / name / shard) for name in ("auto, enough", "explicit"))
    assert all(torch.equal(auto[k], explicit[k]) for k in explicit)


def test_sequential_rounding_refits_only_the_groups_after_the_first(tmp_path, tiny_llama, calib):
    """q/k/v read the block's input either way, so they come out the same; o_proj and the MLP are
    fitted to the inputs the quantized groups before them give, so they differ."""
    for seq in (False, True):
        config = QuantConfig(**FAST, gptq=True, fit_original=False, sequential=seq)
        assert quantize(tiny_llama, tmp_path / str(seq), calib, config, progress=False).config["sequential"] is seq
    shard = "model-00001-of-00003.safetensors"
    plain, sequential = (load_file(tmp_path / str(seq) / shard) for seq in (False, True))
    prefix = "model.layers.0."
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        assert torch.equal(plain[f"{prefix}{name}.qweight"], sequential[f"{prefix}{name}.qweight"]), name
    for name in ("self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"):
        assert not torch.equal(plain[f"{prefix}{name}.qweight"], sequential[f"{prefix}{name}.qweight"]), name


def test_fitting_to_the_original_brings_the_logits_closer_to_the_original_models(tmp_path, tiny_llama, calib):
    """On the calibration tokens it fits to, the model whose linears make up for the blocks before
    them ends closer to the original than GPTQ fitting each linear to its own inputs."""
    misses = {}
    for fit in (False, True):
        config = QuantConfig(**FAST, gptq=True, fit_original=fit)
        report = quantize(tiny_llama, tmp_path / str(fit), calib, config, progress=False)
        assert (report.config["fit_original"], report.config["sequential"]) == (fit, fit)
        misses[fit] = logits_mse(tiny_llama, tmp_path / str(fit), calib)
    assert misses[True] < 0.9 * misses[False]


def test_our_loader_computes_what_the_quantizer_wrote_for_gemma(tmp_path, tiny_gemma, calib, held_out):
    """The (1 + w) norms with 1/s folded in, the embedding scale and the unpacked integers: the loaded model is
    the dense Gemma with exactly the quantizer's weights."""
    quantize(tiny_gemma, tmp_path / "awq", calib, QuantConfig(**FAST), progress=False)
    written = CheckpointFolder(tmp_path / "awq")
    arch = ARCHITECTURES["Gemma3ForCausalLM"]
    layout = LAYOUTS["awq"]
    state = {name: written.get(name) for name in written.tensors if not name.endswith(layout.suffixes)}
    for i in range(2):
        for name in arch.linears:
            prefix = f"{arch.layers}.{i}.{name}"
            groups = layout.unpack({suffix: written.get(f"{prefix}.{suffix}") for suffix in layout.suffixes})
            state[f"{prefix}.weight"] = dequantize_groups(groups.q, groups.scales, groups.zeros, FAST["group_size"])
    dense = AutoModelForCausalLM.from_pretrained(tiny_gemma, dtype=torch.float32)
    dense.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    with torch.no_grad():
        expected = dense(held_out).logits
        got = load_quantized(tmp_path / "awq", CPU_FP32)(held_out).logits
    assert torch.equal(got, expected), (got - expected).abs().max()

"""llm-compressor's AWQModifier on a model folder and calibration ids: the peer that bench.compare times.

Runs in llm-compressor's own environment (it pins other versions than ours):
    LLMC/bin/python -P bench/llmcompressor_awq.py MODEL_DIR CALIB_IDS.safetensors GROUP_SIZE DTYPE \
        [EVAL_IDS.safetensors]
Prints one JSON line: {"seconds": ..., "perplexity": {name: ...}}. Perplexity of the quantized model
(llm-compressor fake-quantizes in forward) uses this project's own function on the given token streams.
"""

import json
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
from llmcompressor.modifiers.transform.awq import AWQModifier
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main() -> None:
    model_dir, calib_path, group_size, dtype = sys.argv[1], sys.argv[2], int(sys.argv[3]), getattr(torch, sys.argv[4])
    # llm-compressor pins cached activations, which on a CPU fails with "Cannot access accelerator device".
    torch.Tensor.pin_memory = lambda self, *args, **kwargs: self
    ids = load_file(calib_path)["input_ids"]  # (N, L): the very windows our quantizer used
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)  # the precision our quantizer computes in
    weights = {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": group_size}
    recipe = [
        AWQModifier(duo_scaling=True),
        QuantizationModifier(
            ignore=["lm_head"], config_groups={"group_0": {"targets": ["Linear"], "weights": weights}}
        ),
    ]
    start = time.perf_counter()
    oneshot(
        model=model, dataset=dataset, recipe=recipe, num_calibration_samples=ids.shape[0], max_seq_length=ids.shape[1]
    )
    seconds = time.perf_counter() - start
    perplexities = {}
    if len(sys.argv) > 5:
        # after transformers' imports: our `kernels` must not shadow theirs
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from validation.perplexity import perplexity

        perplexities = {name: perplexity(model.eval(), ids) for name, ids in load_file(sys.argv[5]).items()}
    print(json.dumps({"seconds": seconds, "perplexity": perplexities}))


if __name__ == "__main__":
    main()

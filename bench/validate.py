"""The quality stages through either engine (validation.scoring), on the demo model, in one run:
the time of the three stages through vLLM as a ratio to transformers, and how well the engines
agree on the same windows and items.

    .venv/bin/python -m bench.validate [--tasks-limit 96]

The demo model is quantized twice with the same calibration: AWQ (the AWQ GEMM layout) and
round-to-nearest in compressed-tensors, the two layouts vLLM serves. Each candidate goes through
perplexity, tasks and long context with both engines against the same baseline; vLLM runs with
the serving arguments of the demo policy (eager, on this host's hardware). Agreement: each model's
perplexity per text, and its chosen answer per multiple-choice item. vLLM's CPU build serves 4-bit
weights only on AVX-512; elsewhere this says so and exits 2. Writes bench/results/validate-DATE-COMMIT.json.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

from transformers import AutoTokenizer

from awq_core import QuantConfig, build_calibration, quantize
from awq_core.compute import Compute, resolve
from awq_release.demo import demo_assets
from awq_release.texts import window_prefix
from bench.results import write_result
from deploy.capability import vllm_awq_capability
from deploy.engine import Serving
from validation import long_context, perplexity, tasks
from validation.models import load_model
from validation.scoring import Engines, ModelScorer, Scorer, end_of_sequence_ids
from validation.settings import LongContextSettings, PerplexitySettings, TaskSettings, TaskSpec

SERVING = Serving(max_model_len=4096, dtype="bfloat16", enforce_eager=True, max_num_seqs=16)
CANDIDATES = {
    "awq": QuantConfig(search_tokens=2048),
    "compressed-tensors": QuantConfig(method="rtn", format="compressed-tensors"),
}
STAGES = (perplexity, tasks, long_context)


def stage_settings(demo, tasks_limit: int) -> dict:
    return {
        perplexity: PerplexitySettings(
            domain_texts=tuple(demo.domain_eval_texts[-4:]),
            general_texts=(demo.general_eval_texts[0],),
            max_tokens=4096,
        ),
        tasks: TaskSettings(
            tasks=(TaskSpec(demo.tasks["world_capitals"]), TaskSpec(demo.tasks["capitals_chat"])), limit=tasks_limit
        ),
        long_context: LongContextSettings(texts=tuple(demo.domain_eval_texts), lengths=(512, 2048), documents=2),
    }


def chosen_answers(scorer: Scorer, tokenizer, items: list[tasks.MultipleChoice]) -> list[int]:
    pairs = [(item.context, tasks.TARGET_DELIMITER + choice) for item in items for choice in item.choices]
    lls, answers = iter(tasks.loglikelihoods(scorer, tokenizer, pairs, batch_size=16)), []
    for item in items:
        ll = [next(lls) for _ in item.choices]
        answers.append(max(range(len(ll)), key=ll.__getitem__))
    return answers


def model_figures(scorer: Scorer, tokenizer, streams: dict, items: list) -> dict:
    """A model's perplexity per text and chosen answer per item, through one engine."""
    prefix = window_prefix(tokenizer)
    ppl = {name: perplexity.perplexity(scorer, ids, prefix=prefix) for name, ids in streams.items()}
    return {"perplexity": ppl, "answers": chosen_answers(scorer, tokenizer, items)}


def agreement(ours: dict, served: dict) -> dict:
    same = sum(a == b for a, b in zip(ours["answers"], served["answers"], strict=True))
    return {
        "perplexity": {
            name: {"transformers": ours["perplexity"][name], "vllm": served["perplexity"][name]}
            | {"relative_difference": served["perplexity"][name] / ours["perplexity"][name] - 1}
            for name in ours["perplexity"]
        },
        "answers_agree": same / len(ours["answers"]),
        "items": len(ours["answers"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks-limit", type=int, default=96, help="items per task")
    args = parser.parse_args(argv)
    capability = vllm_awq_capability()
    if not capability.runs_awq:
        print(f"error: {capability.reason}", file=sys.stderr)
        return 2
    demo, compute = demo_assets(), resolve(Compute())
    tokenizer = AutoTokenizer.from_pretrained(demo.model_dir)
    settings = stage_settings(demo, args.tasks_limit)
    streams = demo.eval_streams(tokenizer, 4096)
    items = [i for i in tasks.load_task(demo.tasks["world_capitals"]) if isinstance(i, tasks.MultipleChoice)]
    figures: dict = {"candidates": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        calib = build_calibration(tokenizer, demo.calibration_texts, n_samples=16, seqlen=256)
        models = {"baseline": demo.model_dir}
        for name, config in CANDIDATES.items():
            quantize(demo.model_dir, work / name, calib, config, progress=False)
            models[name] = work / name
        vllm = Engines("vllm", compute, SERVING, work / "logs", 2048)
        with vllm:
            served = {}
            for role, path in models.items():
                start = time.perf_counter()
                scorer = vllm.scorer(path, role, lambda: None)
                served[role] = {"start_s": time.perf_counter() - start, "scorer": scorer}
            for role, path in models.items():
                ours = ModelScorer(load_model(path, compute), end_of_sequence_ids(path))
                figures[role] = agreement(
                    model_figures(ours, tokenizer, streams, items),
                    model_figures(served[role]["scorer"], tokenizer, streams, items),
                ) | {"vllm_start_s": served[role]["start_s"]}
            for name in CANDIDATES:
                timed = {}
                for engine, engines in (("transformers", Engines("transformers", compute)), ("vllm", vllm)):
                    start, verdicts = time.perf_counter(), {}
                    for stage in STAGES:
                        result = stage.run(models["baseline"], models[name], settings[stage], compute, engines=engines)
                        verdicts[result.stage] = result.status
                    timed[engine] = {"seconds": time.perf_counter() - start, "verdicts": verdicts}
                timed["vllm_to_transformers"] = timed["vllm"]["seconds"] / timed["transformers"]["seconds"]
                figures["candidates"][name] = timed
    run = {
        "compute": compute.describe(),
        "serving": vars(SERVING),
        "tasks_limit": args.tasks_limit,
        "note": "stage seconds through vLLM exclude its server starts (vllm_start_s, once per model); "
        "agreement is measured on the demo's held-out texts (4096 tokens each) and every world_capitals item",
    }
    write_result("validate", run, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""awq-release: the command line. Dagster and the model stacks are imported inside the subcommands that
use them, so that the history commands (history, show, diff, rollback) answer without loading either."""

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Literal, Union, get_args, get_origin, get_type_hints

from awq_release.errors import ReleaseError, ValidationError
from deploy.staging import STAGING_IMAGE, SharedVolume
from validation.result import PowerReport, format_interval, format_limit, format_number
from validation.settings import StageName, ValidationSettings, load_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from awq_core.compute import Compute
    from orchestrator.cli.main_job import JobOutcome


def _choices(kind) -> tuple | None:
    """The values a Literal (or a union of Literals and bool) allows, bool left out; None for a plain type."""
    members = get_args(kind) if get_origin(kind) in (Union, UnionType) else (kind,)
    literals = [m for m in members if get_origin(m) is Literal]
    return tuple(value for m in literals for value in get_args(m)) or None


def _quantize_args(p: argparse.ArgumentParser) -> None:
    """One flag per QuantConfig field, its help, choices and default from the field itself; the
    research switches (ablations) listed apart."""
    from awq_core.config import QuantConfig

    p.add_argument("--n-samples", type=int, default=64, help="calibration windows")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window")
    groups = {
        False: p.add_argument_group("quantization"),
        True: p.add_argument_group("research switches", "ablations; the defaults are what the benchmarks chose"),
    }
    hints = get_type_hints(QuantConfig)
    for field in dataclasses.fields(QuantConfig):
        group, kind = groups[field.metadata["research"]], hints[field.name]
        flag, help_text = f"--{field.name.replace('_', '-')}", f"{field.metadata['help']} (default: {field.default})"
        members = get_args(kind) if get_origin(kind) in (Union, UnionType) else (kind,)
        if bool in members:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
        elif choices := _choices(kind):
            group.add_argument(flag, choices=choices, default=field.default, help=help_text)
        else:
            group.add_argument(flag, type=kind, default=field.default, help=help_text)


def _compute_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:INDEX")
    p.add_argument("--dtype", help="auto (default), float32, bfloat16 or float16")


def _compute(args: argparse.Namespace, config: Path | None = None) -> "Compute":
    """The compute setting: the policy file's `compute:` section, overridden by --device/--dtype."""
    from awq_core.compute import Compute
    from awq_release.settings import from_dict, read_mapping

    setting = (
        from_dict(Compute, read_mapping(config, "Settings file").get("compute", {}), f"{config}: compute")
        if config
        else Compute()
    )
    overrides = {k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v}
    return Compute(**(vars(setting) | overrides))


def _config(args: argparse.Namespace):
    from awq_core import QuantConfig

    return QuantConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(QuantConfig)})


def _calibration(model_dir: Path, files: list[Path], n_samples: int, seqlen: int, config):
    from awq_core import build_calibration
    from awq_core.checkpoint import load_tokenizer
    from awq_core.quantizer import check_checkpoint

    check_checkpoint(model_dir, config)  # a clear error for a broken checkpoint before the tokenizer reads its config
    return build_calibration(load_tokenizer(model_dir), files, n_samples, seqlen)


def cmd_quantize(args: argparse.Namespace) -> int:
    from awq_core import quantize

    config = _config(args)
    calib = _calibration(args.model_dir, args.calib, args.n_samples, args.seqlen, config)
    report = quantize(args.model_dir, args.out_dir, calib, config, progress=not args.json, compute=_compute(args))
    if args.json:
        print(json.dumps(report.summary(), indent=1))
    else:
        print(
            f"wrote {report.out_dir} in {report.seconds:.0f} s on {report.compute['device']} "
            f"{report.compute['dtype']} ({report.compute['why']}), "
            f"peak RSS {report.peak_rss_mb:.0f} MB; per-layer report: {report.report_path}"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from awq_core import quantize
    from awq_core.checkpoint import load_tokenizer
    from awq_core.compute import resolve
    from awq_release.demo import cache_dir, demo_assets
    from validation.models import load_model
    from validation.perplexity import perplexity

    assets = demo_assets()
    out_dir = cache_dir() / "demo" / f"SmolLM2-135M-Instruct-{args.method}-g{args.group_size}"
    shutil.rmtree(out_dir, ignore_errors=True)  # the demo's own output: always made afresh
    print(
        f"Quantizing {assets.model_dir.name} ({args.method}, group {args.group_size}, {args.n_samples} x "
        f"{args.seqlen} calibration tokens from "
        f"{len(assets.calibration_texts)} State of the Union addresses before 2000)"
    )
    config = _config(args)
    calib = _calibration(assets.model_dir, assets.calibration_texts, args.n_samples, args.seqlen, config)
    compute = _compute(args)
    report = quantize(assets.model_dir, out_dir, calib, config, compute=compute)
    print(
        f"wrote {out_dir} in {report.seconds:.0f} s on {report.compute['device']} {report.compute['dtype']}, peak "
        f"RSS {report.peak_rss_mb:.0f} MB"
    )

    texts = assets.eval_streams(load_tokenizer(assets.model_dir), args.eval_tokens)
    resolved = resolve(compute)
    models = {"original": load_model(assets.model_dir, resolved), args.method.upper(): load_model(out_dir, resolved)}
    print(
        f"\nperplexity on {args.eval_tokens} held-out tokens each of SOTU 2000-2021 (domain) and Shakespeare "
        "(general), windows of 512 every 256:"
    )
    print(f"{'text':10} {'original':>8} {args.method.upper():>8} {'change':>8}")
    for name, ids in texts.items():
        base, quant = (perplexity(model, ids) for model in models.values())
        print(f"{name:10} {base:8.2f} {quant:8.2f} {100 * (quant / base - 1):+7.1f}%")
    return 0


def _print_stage(result) -> None:
    where = " ".join(str(v) for k, v in (result.compute or {}).items() if k in ("device", "dtype", "engine", "server"))
    print(f"\n[{result.status.upper()}] {result.stage} ({result.seconds:.0f} s; {where})")
    for m in result.metrics:
        print(
            f"  {'ok  ' if m.passed else 'FAIL'} {m.name:44} baseline {format_number(m.baseline):>9}  candidate "
            f"{format_number(m.candidate):>9}  "
            f"estimate {format_number(m.value):>9} {format_interval(m.interval):>21} {m.limit}  {m.verdict}"
        )
    for line in [r for r in (result.error, result.skipped) if r] + [f"warning: {w}" for w in result.warnings]:
        print(f"  {line}")


def _power_check(args: argparse.Namespace, settings: ValidationSettings, compute: "Compute") -> PowerReport:
    from validation.power import power_check

    if args.damage_layer:
        power = dataclasses.replace(settings.power_check, layers=tuple(args.damage_layer))
        settings = dataclasses.replace(settings, power_check=power)
    parent = args.candidate.resolve().parent  # beside the candidate, damaged copies can hard-link its files
    with tempfile.TemporaryDirectory(
        prefix=".power-check-", dir=parent if os.access(parent, os.W_OK) else None
    ) as work:
        return power_check(args.baseline, args.candidate, settings, work, compute)


def _print_power(report: PowerReport) -> None:
    _print_power_record(report.to_dict())
    for outcome in report.outcomes:
        for stage, reasons in outcome.reasons.items():
            print(f"  {outcome.damage} / {stage}:" + "".join(f"\n    {reason}" for reason in reasons))


def cmd_validate(args: argparse.Namespace) -> int:
    from awq_core.compute import resolve
    from validation.stages import STAGES, run_stage, scoring_engines

    if not args.stage and not args.power_check:
        raise ValidationError("Name the stages to run (--stage NAME, or --stage all), --power-check, or both.")
    settings = load_settings(args.config)
    compute = _compute(args, args.config)
    names = list(STAGES) if "all" in (args.stage or []) else list(dict.fromkeys(args.stage or []))
    results = {}
    with scoring_engines(settings, resolve(compute)) as engines:  # each model's engine serves every stage
        for name in names:
            results[name] = run_stage(name, args.baseline, args.candidate, settings, compute, engines=engines)
            if not args.json:
                _print_stage(results[name])
    power = _power_check(args, settings, compute) if args.power_check else None
    if power and not args.json:
        _print_power(power)
    passed = all(r.status != "failed" for r in results.values())  # a stage the policy lets skip blocks nothing
    trusted = power is None or not power.blind
    if args.json:
        summary = {"passed": passed, "stages": {n: r.to_dict() for n, r in results.items()}}
        if power:
            summary["power_check"] = power.to_dict()
        print(json.dumps(summary, indent=1, default=str))
    else:
        print(f"\n{'all stages passed' if passed else 'a gate failed'}" + ("" if trusted else "; the gates are blind"))
    return 0 if passed and trusted else 1


def _platform() -> "tuple[Engine, Path]":
    """The lineage database (migrated) and the registry folder, as orchestrator.environment says and
    the Dagster resources use them; read without importing Dagster."""
    from orchestrator import environment
    from orchestrator.lineage import upgrade

    return upgrade(environment.database_url()), environment.registry_dir()


def _print_history(rows: list[dict]) -> None:
    print(f"{'model':28} {'version':8} {'status':12} {'created (UTC)':20} gates")
    for r in rows:
        failed = [k for k, g in r["gates"].items() if not g["passed"]]
        passed = f"{len(r['gates']) - len(failed)}/{len(r['gates'])} passed"
        # A stage can fail with no gate measured (a server that never started): it must not read as passed.
        failed += [
            f"{stage} ({'; '.join(outcome['reasons'])[:80]})"
            for stage, outcome in r["stages"].items()
            if outcome["status"] == "failed" and not any(k.startswith(f"{stage}.") for k in failed)
        ]
        skipped = [stage for stage, outcome in r["stages"].items() if outcome["status"] == "skipped"]
        gates = passed + (f"; failed: {', '.join(failed)}" if failed else "")
        gates += f"; skipped: {', '.join(skipped)}" if skipped else ""
        power = r["power_check"]
        if power:
            caught = f"{power['caught']}/{power['planted']} planted damages caught"
            gates += f"; power check: {'BLIND, ' if power['blind'] else ''}{caught}"
        print(f"{r['model']:28} {r['version']:8} {r['status']:12} {r['created_at'][:19]:20} {gates}")


def _print_attempts(rows: list[dict]) -> None:
    if not rows:
        return
    print(f"\n{'attempt (Dagster run)':38} {'checkpoint':28} {'status':9} {'started (UTC)':20} reason")
    for r in rows:
        print(f"{r['run_id']:38} {r['checkpoint']:28} {r['status']:9} {r['started_at'][:19]:20} {r['reason'] or ''}")


def _print_gates(gates: dict[str, dict]) -> None:
    """A release's gates: estimate, interval, threshold (a ceiling or a floor) and verdict (history's records)."""
    print(f"  {'':4} {'gate':60} {'estimate':>9} {'interval':>21} {'threshold':>18}  verdict")
    for name, g in gates.items():
        interval = format_interval(tuple(g["interval"]) if g["interval"] else None)
        print(
            f"  {'ok  ' if g['passed'] else 'FAIL'} {name:60} {format_number(g['value']):>9} {interval:>21} "
            f"{format_limit(g['threshold'], g['bound']):>18}  {g['verdict']}"
        )


def _print_power_record(power: dict | None) -> None:
    from orchestrator.release.reports import power_summary, power_table

    print(f"\n{power_summary(power)}" + (f"\n{power_table(power)}" if power else ""))


def _print_outcomes(outcomes: "list[JobOutcome]", rows: list[dict]) -> None:
    """Each run's result, time per step, and the release it made or refused: gates, power check, path."""
    for outcome in outcomes:
        latest = next((r for r in reversed(rows) if r["status"] != "rolled_back"), None)
        print(
            f"run {outcome.run_id} for checkpoint {outcome.partition_key}: "
            f"{'succeeded' if outcome.success else 'FAILED'}"
        )
        steps = [f"{step} {'not run' if s is None else f'{s:.0f} s'}" for step, s in outcome.step_seconds.items()]
        print(f"  time: {outcome.seconds:.0f} s in all; per step: " + ", ".join(steps))
        if latest:
            print(
                f"release {latest['model']} {latest['version']}: {latest['status']}"
                + (f" at {latest['path']}" if latest["path"] else f" ({latest['reason']})")
            )
            _print_gates(latest["gates"])
            for stage, stage_outcome in latest["stages"].items():
                if stage_outcome["status"] == "skipped":
                    print(f"  SKIP {stage}: {'; '.join(stage_outcome['reasons'])}")
            _print_power_record(latest["power_check"])


def cmd_run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as transformers_logging

    from awq_core.compute import Compute, resolve
    from awq_release.demo import demo_assets
    from orchestrator.cli.main_job import run_demo, run_platform, why_not_started
    from orchestrator.lineage.releases import attempt_history, history

    if not args.verbose:  # a bar per block and per stage is progress enough; not one per weights file read
        transformers_logging.disable_progress_bar()
    log_level = "DEBUG" if args.verbose else "INFO"
    if args.no_demo:
        outcomes, why = run_platform(log_level, args.recompute), "(the watched folder holds nothing new or retryable)"
    else:
        print(f"compute: {resolve(Compute())}", file=sys.stderr)  # the demo policy's setting: auto
        assets = demo_assets()
        outcomes = run_demo(assets, log_level, args.recompute)
        why = f"at {assets.model_dir.name}: {why_not_started(assets)}" if not outcomes else ""
    engine, _ = _platform()
    rows = history(engine)
    if not outcomes:
        print(f"No new attempt {why}; history:")
    _print_outcomes(outcomes, rows)
    print()
    _print_history(rows)
    _print_attempts(attempt_history(engine))
    return 0 if all(o.success for o in outcomes) else 1


def cmd_history(args: argparse.Namespace) -> int:
    from orchestrator.lineage.releases import attempt_history, history

    engine, _ = _platform()
    rows = history(engine, args.model)
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
    else:
        _print_history(rows)
        _print_attempts(attempt_history(engine))
    return 0


def _print_release(record: dict, current: str | None) -> None:
    """One release as a person reads it: where it is and how to start it, what it was made from and
    how, its gates, its power check and what happened to it."""
    manifest = record["manifest"] or {}
    state = record["status"] + (", current" if record["version"] == current else "")
    print(f"{record['model']} {record['version']}: {state} (created {record['created_at'][:19]} UTC)")
    facts = [("path", record["path"] or f"- ({record['reason']})")]
    if serving := manifest.get("serving"):
        facts.append(("serve", f"sh {record['path']}/serve.sh --port 8000   (target: {serving['target']})"))
    if checkpoint := manifest.get("checkpoint"):
        where = f", from {checkpoint['path']}" if checkpoint.get("path") else ""
        facts.append(("checkpoint", f"{checkpoint['name']} (sha256 {checkpoint['content_hash'][:16]}…){where}"))
    if calibration := manifest.get("calibration"):
        facts.append(
            (
                "calibration",
                f"{calibration['n_samples']} x {calibration['seqlen']} tokens from {len(calibration['sources'])} "
                f"files (tokens sha256 {calibration['tokens_hash'][:16]}…)",
            )
        )
    if settings := record["settings"]:
        from orchestrator.release.reports import rounding_steps

        layout = f"{settings.get('format', 'awq')}, group {settings['group_size']}"
        facts.append(("quantization", f"{layout}, {rounding_steps(settings)}"))
    if policy := manifest.get("policy"):
        attempt = f", attempt {manifest['attempt']}" if manifest.get("attempt") else ""
        facts.append(("policy", f"sha256 {policy['hash'][:16]}…{attempt}"))
    for name, value in facts:
        print(f"  {name:13} {value}")
    print()
    _print_gates(record["gates"])
    for stage, outcome in record["stages"].items():
        if outcome["status"] != "passed":
            print(f"  {outcome['status'].upper()} {stage}: {'; '.join(outcome['reasons'])}")
    _print_power_record(record["power_check"])
    print("\nevents:")
    for event in record["events"]:
        print(f"  {event['at'][:19]}  {event['action']:12} {event['detail'] or ''}")
    print(f"\nthe whole record: awq-release show {record['version']} --model {record['model']} --json")


def cmd_show(args: argparse.Namespace) -> int:
    from deploy.registry import current_version
    from orchestrator.lineage.releases import show

    engine, registry = _platform()
    record = show(engine, args.version, args.model)
    if args.json:
        print(json.dumps(record, indent=1, default=str))
    else:
        _print_release(record, current_version(registry, record["model"]))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from orchestrator.lineage.releases import diff

    changes = diff(_platform()[0], args.a, args.b, args.model)
    if not changes:
        print(f"no differences between {args.a} and {args.b} in settings, gate figures or status")
        return 0
    print(f"{'':60} {args.a:>14} {args.b:>14}")
    for key, (a, b) in changes.items():
        print(f"{key:60} {str(a):>14.14} {str(b):>14.14}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from orchestrator.lineage.releases import rollback

    engine, registry = _platform()
    result = rollback(engine, registry, args.model)
    print(f"{result['model']}: {result['rolled_back']} rolled back; {result['current']} is current")
    return 0


def cmd_staging(args: argparse.Namespace) -> int:
    """Manifests of a staging vLLM server of a release (its vllm-config.yaml) or a candidate (the
    policy's serving, on --tensor-parallel-size GPUs), for `kubectl apply -f -`."""
    import yaml

    from deploy.engine import engine_args
    from deploy.registry import safe_name
    from deploy.staging import endpoint, staging_manifests
    from orchestrator.environment import policy_path
    from orchestrator.pipeline.placement import gpu_nodes
    from orchestrator.release.policy import policy_or_defaults

    folder, policy = args.model_dir.resolve(), policy_or_defaults(policy_path())
    name = safe_name(args.name or folder.name)
    launch = folder / "vllm-config.yaml"
    if launch.is_file():
        engine = yaml.safe_load(launch.read_text())
    elif (folder / "config.json").is_file():
        tp = args.tensor_parallel_size or policy.serving.tensor_parallel_size
        engine = engine_args(folder, name, dataclasses.replace(policy.serving, tensor_parallel_size=tp), "gpu")
    else:
        raise ValidationError(f"{folder} holds neither vllm-config.yaml (a release) nor config.json (a candidate).")
    volume = SharedVolume(args.claim, args.mount_path)
    manifests = staging_manifests(name, engine, args.image, args.namespace, gpu_nodes(policy.target_gpu), volume)
    print(yaml.safe_dump_all(manifests, sort_keys=False), end="")
    print(f"# load.endpoint: {endpoint(name, args.namespace)}", file=sys.stderr)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Become `dagster dev` on the platform's home. A process started in the background inherits
    SIGINT ignored, and `dagster dev` gives SIGTERM whatever SIGINT does: it would ignore both, and
    its daemon would tick on. SIGINT's default is restored before the exec, so SIGTERM stops it."""
    import signal

    from orchestrator.cli.main_job import prepare_home
    from orchestrator.environment import platform_home

    dagster_home = prepare_home(platform_home())
    dagster = Path(sys.executable).parent / "dagster"
    command = [str(dagster), "dev", "-m", "orchestrator.definitions", "-h", args.host, "-p", str(args.port)]
    print(
        f"Dagster UI at http://{args.host}:{args.port} (DAGSTER_HOME={dagster_home}); SIGTERM or Ctrl-C stops it",
        file=sys.stderr,
    )
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execve(dagster, command, os.environ | {"DAGSTER_HOME": str(dagster_home)})


def cmd_worker(args: argparse.Namespace) -> int:
    try:
        from orchestrator.distributed.worker import start_worker
    except ImportError as e:
        raise ReleaseError(
            "`awq-release worker` needs dagster-celery: install the project with its `celery` extra."
        ) from e
    start_worker(args.queues, args.concurrency, args.name)
    return 0


def cmd_fetch_demo(args: argparse.Namespace) -> int:
    from awq_release.demo import cache_dir, demo_assets, gemma_model_dir, write_demo_policy

    assets = demo_assets()
    policy = write_demo_policy(assets, cache_dir() / "demo-policy.yaml")
    print(f"second architecture (tests and benchmarks): {gemma_model_dir() or 'not installed'}")
    print(
        f"demo model: {assets.model_dir}\ncalibration texts: {len(assets.calibration_texts)}, held-out: "
        f"{len(assets.domain_eval_texts)}, "
        f"general: {len(assets.general_eval_texts)}, tasks: {', '.join(assets.tasks)}\nvalidation settings: {policy}"
    )
    return 0


def command(sub, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary is also its --help description."""
    return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="awq-release", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = command(sub, "quantize", "AWQ-quantize a checkpoint into a 4-bit AWQ GEMM or compressed-tensors one")
    p.add_argument("model_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument(
        "--calib", type=Path, nargs="+", required=True, help=".txt files, or .jsonl with 'text' or chat 'messages'"
    )
    _quantize_args(p)
    _compute_args(p)
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.set_defaults(func=cmd_quantize)

    p = command(sub, "demo", "quantize the embedded demo model and compare its perplexity with the original's")
    _quantize_args(p)
    _compute_args(p)
    p.set_defaults(n_samples=16)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.set_defaults(func=cmd_demo)

    p = command(
        sub, "validate", "compare a quantized candidate with its baseline; exit 0 passed, 1 a gate failed, 2 error"
    )
    p.add_argument("baseline", type=Path)
    p.add_argument("candidate", type=Path)
    p.add_argument("--stage", action="append", choices=(*get_args(StageName), "all"), help="repeatable")
    p.add_argument("--config", type=Path, help="YAML or JSON settings and thresholds (see validation/settings.py)")
    p.add_argument(
        "--power-check",
        action="store_true",
        help="also plant known damage into copies of the candidate and report which stage catches which "
        "(validation.power_check in --config chooses damages and stages); exit 1 if none is caught",
    )
    p.add_argument(
        "--damage-layer",
        action="append",
        metavar="LINEAR",
        help="a linear whose scales the power check shuffles, e.g. model.layers.3.self_attn.o_proj; repeatable",
    )
    _compute_args(p)
    p.add_argument(
        "--json", action="store_true", help='one JSON object: {"passed": ..., "stages": {...}, "power_check": {...}}'
    )
    p.set_defaults(func=cmd_validate)

    p = command(sub, "run", "the main job: release the demo checkpoint through the whole platform, in process")
    p.add_argument("--verbose", action="store_true", help="every Dagster event (DEBUG), and every progress bar")
    p.add_argument(
        "--no-demo",
        action="store_true",
        help="release what the watched folder holds under its own policy, without placing the demo there",
    )
    p.add_argument(
        "--recompute",
        action="store_true",
        help="quantize and measure everything again: this pass reuses no finished work (as the policy's reuse: false)",
    )
    p.set_defaults(func=cmd_run)

    p = command(
        sub,
        "history",
        "every release (newest last) with its gates and power check, then every attempt and how it ended",
    )
    p.add_argument("--model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)

    p = command(sub, "show", "one release: where it is and how to start it, its origin, gates, power check and events")
    p.add_argument("version")
    p.add_argument("--model")
    p.add_argument("--json", action="store_true", help="the whole record: manifest, settings, gates, events")
    p.set_defaults(func=cmd_show)

    p = command(sub, "diff", "settings and gate metrics of two releases side by side")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--model")
    p.set_defaults(func=cmd_diff)

    p = command(sub, "rollback", "make the previous promoted release of MODEL current again")
    p.add_argument("model")
    p.set_defaults(func=cmd_rollback)

    p = command(sub, "staging", "Kubernetes manifests of a staging vLLM server of a release or a candidate")
    p.add_argument("model_dir", type=Path, help="a release (with vllm-config.yaml) or a candidate on the shared volume")
    p.add_argument("--name", help="the Deployment's and Service's name (default: the folder's)")
    p.add_argument("--namespace", default="awq-release")
    p.add_argument("--image", default=STAGING_IMAGE, help="a vLLM server image (default: %(default)s)")
    p.add_argument("--claim", default=SharedVolume.claim, help="the platform's shared PersistentVolumeClaim")
    p.add_argument(
        "--mount-path", default=SharedVolume.mount_path, help="where the platform's pods mount it (AWQ_RELEASE_HOME)"
    )
    p.add_argument("--tensor-parallel-size", type=int, help="a candidate's GPUs (default: the policy's)")
    p.set_defaults(func=cmd_staging)

    p = command(
        sub, "ui", "the Dagster UI, daemon and sensors on this platform (dagster dev), stopped by SIGTERM or Ctrl-C"
    )
    p.add_argument("--host", default="127.0.0.1", help="the interface the UI listens on (default: %(default)s)")
    p.add_argument("--port", type=int, default=3000, help="default: %(default)s")
    p.set_defaults(func=cmd_ui)

    p = command(
        sub,
        "worker",
        "run the release job's steps of a queue on this machine, for runs under AWQ_RELEASE_EXECUTOR=celery",
    )
    p.add_argument(
        "--queues",
        nargs="+",
        choices=("gpu", "cpu"),
        default=["gpu", "cpu"],
        help="gpu: quantization and model evaluation; cpu: ingest, calibration, release (default: both)",
    )
    p.add_argument(
        "--concurrency", type=int, default=1, help="steps at once (default: %(default)s; one per GPU on a gpu queue)"
    )
    p.add_argument("--name", help="this worker's name, unique on its host (default: awq-QUEUES)")
    p.set_defaults(func=cmd_worker)

    p = command(sub, "fetch-demo", "fetch and convert the demo model and texts (done by scripts/setup.sh)")
    p.set_defaults(func=cmd_fetch_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is a local folder: never wait on a hub
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ReleaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""A release's manifest.json: where it came from, how it was made and what its gates measured."""

import re
from pathlib import Path

import yaml

from orchestrator.lineage.models import ValidationStage
from orchestrator.lineage.queries import Lineage
from orchestrator.lineage.rows import metric_record, power_check_record
from orchestrator.release.hashing import file_hash
from orchestrator.release.policy import LICENSE_ID, CardPolicy
from orchestrator.release.snapshots import PolicySnapshot

FRONT_MATTER = re.compile(r"\A---\r?\n(.*?)\r?\n---\r?\n", re.DOTALL)
MAX_FRONT_MATTER = 64 * 1024  # a card's metadata is a few lines; anything longer is not read
HUB_ID = re.compile(r"[\w.-]{1,96}(/[\w.-]{1,96})?")  # owner/name or name


def checkpoint_card(model_dir: Path) -> dict:
    """The licence and base model the checkpoint's own README.md front matter declares, where they
    are well formed: the file is untrusted, so it is parsed as plain YAML data and only these two
    fields, each a short id, are taken."""
    readme = model_dir / "README.md"
    if not readme.is_file() or readme.is_symlink():
        return {}
    match = FRONT_MATTER.match(readme.read_text(encoding="utf-8", errors="replace")[:MAX_FRONT_MATTER])
    try:
        data = yaml.safe_load(match[1]) if match else None
    except yaml.YAMLError:
        return {}
    if not isinstance(data, dict):
        return {}
    found = {"license": data.get("license"), "base_model": data.get("base_model")}
    valid = {"license": LICENSE_ID, "base_model": HUB_ID}
    return {k: v for k, v in found.items() if isinstance(v, str) and valid[k].fullmatch(v)}


def card_facts(card: CardPolicy, checkpoint_base_model: str | None, model_dir: Path) -> dict:
    """What the model card's front matter says of the release's origin: the policy's word first,
    then the checkpoint's README, then its config (a merged adapter's base, or _name_or_path);
    whether its tokenizer has a chat template (the card's snippets use it)."""
    declared = checkpoint_card(model_dir)
    from_config = checkpoint_base_model if checkpoint_base_model and HUB_ID.fullmatch(checkpoint_base_model) else None
    tokenizer_config = model_dir / "tokenizer_config.json"
    chat_template = (model_dir / "chat_template.jinja").is_file() or (
        tokenizer_config.is_file() and '"chat_template"' in tokenizer_config.read_text(errors="replace")
    )
    return {
        "license": card.license or declared.get("license"),
        "base_model": card.base_model or declared.get("base_model") or from_config,
        "chat_template": chat_template,
    }


def _validation(row: ValidationStage) -> dict:
    metrics = {m.metric: metric_record(m) for m in row.metrics}
    return {
        "status": row.status,
        "passed": row.passed,
        "reasons": row.reasons,
        "compute": row.compute,
        "metrics": metrics,
    }


def build_manifest(
    model: str, version: str, release_id: int, chain: Lineage, policy: PolicySnapshot, launch: dict, attempt: str
) -> dict:
    """`policy` is the release run's snapshot; the quantization run's own is under quantization.
    `launch`: deploy.registry.release_launch(), how the release starts; `attempt`: the Dagster run."""
    checkpoint, calibration, run = chain.checkpoint, chain.calibration, chain.run
    output = Path(run.output_path)
    return {
        "model": model,
        "version": version,
        "release_id": release_id,
        "attempt": attempt,
        "checkpoint": {
            "id": checkpoint.id,
            "name": checkpoint.name,
            "path": checkpoint.path,
            "content_hash": checkpoint.content_hash,
            "base_model": checkpoint.base_model,
            "adapter": checkpoint.adapter_path,
        },
        "calibration": {
            "id": calibration.id,
            "tokens_hash": calibration.tokens_hash,
            "n_samples": calibration.n_samples,
            "seqlen": calibration.seqlen,
            "sources": calibration.source_hashes,
        },
        "quantization": {
            "id": run.id,
            "settings": run.settings,
            "output_hash": run.output_hash,
            "policy_hash": chain.policy.hash if chain.policy else None,
            "seconds": run.seconds,
        },
        "files": {p.name: file_hash(p) for p in sorted(output.iterdir()) if p.is_file()},
        "validation": {stage: _validation(row) for stage, row in chain.stages.items()},
        "power_check": power_check_record(chain.power_check, chain.power_check_measured_on),
        "serving": launch,
        "card": card_facts(policy.policy.card, checkpoint.base_model, output),
        "policy": {"id": policy.id, "hash": policy.hash, "text": policy.text},
    }

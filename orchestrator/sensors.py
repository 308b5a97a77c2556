"""The checkpoint sensor: one run per completely written checkpoint content.

Completeness: a folder counts as written when its file list, sizes and modification times are
unchanged across two consecutive ticks (no marker file needed from the training job). Hidden
folders (.name) are skipped as partial copies. The run key is the content hash, and the cursor
remembers hashes already requested, so a re-copied or renamed checkpoint is not released twice.
"""

import hashlib
import json
from pathlib import Path

import dagster as dg

from awq_release.errors import ReleaseError
from deploy.registry import safe_name
from orchestrator.hashing import content_hash
from orchestrator.partitions import CHECKPOINTS
from orchestrator.resources import Platform


def signature(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            h.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def scan(
    checkpoints_dir: Path, cursor: dict, known_partitions: set[str], log
) -> tuple[list[dg.RunRequest], list[str], dict]:
    """One tick: (run requests, partitions to add, next cursor). Logs why each folder is skipped."""
    last_seen: dict = cursor.get("signatures", {})
    requested: list = cursor.get("requested", [])
    signatures, requests, new_keys = {}, [], []
    for folder in sorted(p for p in checkpoints_dir.iterdir() if p.is_dir()):
        if folder.name.startswith("."):
            log.info(f"skip {folder.name!r}: hidden folder (a copy in progress)")
            continue
        signatures[folder.name] = signature(folder)
        if last_seen.get(folder.name) != signatures[folder.name]:
            log.info(f"skip {folder.name!r}: new or still changing; released once unchanged over two ticks")
            continue
        try:
            key = safe_name(folder.name)
        except ReleaseError as e:
            log.warning(f"skip {folder.name!r}: {e}")
            continue
        digest = content_hash(folder)
        if digest in requested:
            log.info(f"skip {folder.name!r}: content {digest[:12]} already requested")
            continue
        requested.append(digest)
        requests.append(
            dg.RunRequest(
                run_key=digest, partition_key=key, tags={"checkpoint_folder": folder.name, "content_hash": digest}
            )
        )
        if key not in known_partitions and key not in new_keys:
            new_keys.append(key)
    return requests, new_keys, {"signatures": signatures, "requested": requested}


@dg.sensor(job_name="release_job", minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def checkpoint_sensor(context: dg.SensorEvaluationContext, platform: Platform) -> dg.SensorResult:
    checkpoints_dir = Path(platform.checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    known = set(context.instance.get_dynamic_partitions(CHECKPOINTS.name))
    requests, new_keys, cursor = scan(checkpoints_dir, json.loads(context.cursor or "{}"), known, context.log)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[CHECKPOINTS.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(cursor),
        skip_reason=None if requests else "no new, completely written checkpoint",
    )

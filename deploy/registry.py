"""The release registry folder: atomic promotion, one-step rollback, a `current` pointer per model.

    REGISTRY/MODEL/releases/VERSION/   the quantized model, manifest.json, README.md (model card),
                                       vllm-config.yaml (engine arguments) and serve.sh (the
                                       environment, then vLLM with that file): startable as is
    REGISTRY/MODEL/current -> releases/VERSION

A release is copied into a hidden `.VERSION.partial` folder and renamed into place when whole; the
`current` symlink is replaced by rename, so readers see the old release or the new one, never a mix.
"""

import hashlib
import json
import os
import re
import shutil
import unicodedata
from pathlib import Path

import yaml

from awq_release.errors import PromotionError
from deploy.engine import LAUNCH_CONFIG, LAUNCH_SCRIPT, Serving, Target, engine_args, engine_env, launch_script

SAFE_NAME = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")  # runs of letters and digits, one separator apart
MAX_NAME = 64


def safe_name(name: str) -> str:
    """A folder- and URL-safe name for a user-supplied one, never the same for two names: the name
    itself where it is already safe (letters and digits, single . _ - between them), else a readable
    ASCII slug, "--" and 8 hex digits of the name's sha256 ("Support Bot" -> "Support-Bot--1f0e...",
    a name of no Latin letters -> "model--..."). No safe name holds "--", so the two kinds never meet."""
    if SAFE_NAME.fullmatch(name) and len(name) <= MAX_NAME:
        return name
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = "-".join(re.findall(r"[A-Za-z0-9]+", ascii_name))[:MAX_NAME].strip("-") or "model"
    return f"{slug}--{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def model_root(registry: Path, model: str) -> Path:
    return Path(registry) / safe_name(model)


def current_version(registry: Path, model: str) -> str | None:
    link = model_root(registry, model) / "current"
    return Path(os.readlink(link)).name if link.is_symlink() else None


def point_current(registry: Path, model: str, version: str) -> None:
    """Swap `current` to releases/VERSION in one rename."""
    root = model_root(registry, model)
    if not (root / "releases" / version).is_dir():
        raise PromotionError(f"Release {version} of {model} is not in the registry ({root / 'releases'}).")
    tmp = root / f".current.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path("releases") / version)
    os.replace(tmp, root / "current")


PLOTS = "plots"  # a release's figures, as plots/NAME.png: its model card shows them


def write_release(
    registry: Path,
    model: str,
    version: str,
    model_dir: Path,
    manifest: dict,
    model_card: str,
    launch: dict,
    figures: dict[str, Path] | None = None,
) -> Path:
    """Copy `model_dir` into the registry as MODEL/releases/VERSION, whole or not at all: it is
    assembled in a hidden .VERSION.partial folder and renamed into place. Not made current.
    `launch`: release_launch()'s engine arguments and environment. `figures`: PNG files by name,
    copied in as plots/NAME.png."""
    links = sorted(str(p.relative_to(model_dir)) for p in Path(model_dir).rglob("*") if p.is_symlink())
    if links:
        raise PromotionError(
            f"{model_dir} holds links ({', '.join(links)}): a release holds only files, never what a link points "
            "to. Quantize again from a checkpoint without links."
        )
    final = release_folder(registry, model, version)
    releases = final.parent
    if final.exists():
        raise PromotionError(f"Release {version} of {model} already exists at {final}: versions are never overwritten.")
    releases.mkdir(parents=True, exist_ok=True)
    partial = releases / f".{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # leftovers of a killed promotion
    try:
        shutil.copytree(model_dir, partial, symlinks=True, ignore=shutil.ignore_patterns(".*"))
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
        (partial / "README.md").write_text(model_card)
        if figures:
            (partial / PLOTS).mkdir()
        for name, figure in (figures or {}).items():
            shutil.copyfile(figure, partial / PLOTS / f"{name}.png")
        (partial / LAUNCH_CONFIG).write_text(yaml.safe_dump(launch["engine"], sort_keys=False))
        (partial / LAUNCH_SCRIPT).write_text(launch_script(launch["env"]))
        (partial / LAUNCH_SCRIPT).chmod(0o755)
        partial.rename(final)
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise PromotionError(
            f"Could not write {model} {version} into {releases} ({e.strerror or e}): nothing of it was kept and "
            "the current release is untouched; free space or fix permissions there, then run again."
        ) from e
    return final


def release_launch(registry: Path, model: str, version: str, model_dir: Path, serving: Serving, target: Target) -> dict:
    """How the release starts, for its vllm-config.yaml, serve.sh, manifest and card: the target
    hardware, vLLM's engine arguments (the model at its release folder) and environment."""
    engine = engine_args(model_dir, safe_name(model), serving, target)
    return {
        "target": target,
        "engine": engine | {"model": str(release_folder(registry, model, version))},
        "env": engine_env(serving, target),
    }


def publish(
    registry: Path,
    model: str,
    version: str,
    model_dir: Path,
    manifest: dict,
    model_card: str,
    serving: Serving,
    target: Target = "gpu",
) -> Path:
    """write_release() served with `serving` on `target`, then make it current."""
    launch = release_launch(registry, model, version, model_dir, serving, target)
    final = write_release(registry, model, version, model_dir, manifest, model_card, launch)
    point_current(registry, model, final.name)
    return final


def versions_on_disk(registry: Path, model: str) -> list[str]:
    """The release folders of a model, hidden partial ones left out."""
    releases = model_root(registry, model) / "releases"
    return (
        sorted(p.name for p in releases.iterdir() if p.is_dir() and not p.name.startswith("."))
        if releases.is_dir()
        else []
    )


def release_folder(registry: Path, model: str, version: str) -> Path:
    return model_root(registry, model) / "releases" / safe_name(version)


def withdraw(registry: Path, model: str, version: str) -> None:
    """Remove a release folder that never became current (its database record was not committed)."""
    shutil.rmtree(release_folder(registry, model, version), ignore_errors=True)

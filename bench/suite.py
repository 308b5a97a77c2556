"""The test suite's wall time, tier by tier, as CI runs it: each tier alone, one after another.

    .venv/bin/python -m bench.suite [--tiers unit,integration,e2e]

CI's budget is 25 minutes for the whole suite on both CPU kinds and two minutes for the unit tier
alone. Run it on an otherwise idle machine: concurrent torch processes inflate every figure. Writes
bench/results/suite-DATE-COMMIT.json with each tier's seconds and pytest's counts.
"""

import argparse
import re
import subprocess
import sys
import time

from bench.results import write_result

TIERS = ("unit", "integration", "e2e")
BUDGET_S = {"unit": 120, "whole": 25 * 60}


def run_tier(tier: str) -> dict:
    """One tier in a fresh pytest process: its wall seconds, exit code and counts (passed, skipped, ...)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", tier]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    print(f"{tier}: {seconds:.0f} s, {summary}", flush=True)
    return {"seconds": seconds, "exit_code": result.returncode, "counts": counts, "slowest": slowest(result.stdout)}


def slowest(output: str) -> list[dict]:
    """pytest's --durations lines (the suite's addopts): where a tier's time goes."""
    lines = re.findall(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)$", output, re.MULTILINE)
    return [{"seconds": float(s), "phase": phase, "test": test} for s, phase, test in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiers", default=",".join(TIERS))
    args = parser.parse_args()
    tiers = args.tiers.split(",")
    if unknown := sorted(set(tiers) - set(TIERS)):
        raise SystemExit(f"--tiers {args.tiers}: {unknown} unknown; choose from {', '.join(TIERS)}.")
    figures = {tier: run_tier(tier) for tier in tiers}
    total = sum(f["seconds"] for f in figures.values())
    print(f"all listed tiers: {total:.0f} s (budgets: unit {BUDGET_S['unit']} s, whole {BUDGET_S['whole']} s)")
    write_result("suite", {"tiers": tiers, "budget_s": BUDGET_S}, figures | {"total_seconds": total})
    if any(f["exit_code"] != 0 for f in figures.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()

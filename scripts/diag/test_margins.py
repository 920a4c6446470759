"""The learning tests' margins (DESIGN §7.8): every test marked ``learning`` rerun on several seeds and two
floating-point orders (one thread; two threads on other kernels, see SECOND_ORDER), each learned quantity tabulated
against its threshold.

    OMP_NUM_THREADS=1 python scripts/diag/test_margins.py [--seeds 0,1,2,3,4] [--threads 1,2] [-k EXPR] \
        [--out runs/margins] [--table docs/testing.md] [--table-only]

Each (seed, threads) is one ``pytest -m learning`` run with ``PBRL_TEST_SEED`` / ``PBRL_TEST_THREADS`` set and
``PBRL_MARGINS_OUT`` pointing at a JSON lines file: the tests' ``learned.check(...)`` then records every quantity
instead of asserting it (tests/conftest.py). Runs already on disk are reused (delete the folder, or change ``-k``, to
rerun); a later selection's rows replace an earlier one's for the same test. The table gives, per quantity, its values
over the runs, the threshold and the margin in standard deviations over the runs: ``(worst - threshold) / std``
on the side the check asks for. A known-bad variant's row is marked; its check asserts that it fails the claim.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Two threads alone leave small networks' arithmetic unchanged (torch splits no work that small), so the second order
# also takes MKL's "compatible" code path for its matrix products: other kernels, other rounding, as another CPU's
# would give (measured: CPL's mean action 0.5541877 against 0.5541849 at seed 0). ATen's own scalar kernels
# (ATEN_CPU_CAPABILITY=default) round like that too but run several times slower.
SECOND_ORDER = {"MKL_CBWR": "COMPATIBLE"}


def run_pytest(out: Path, seed: int, threads: int, select: str | None) -> None:
    """One ``pytest -m learning`` run recording into ``out`` (skipped if ``out`` exists: the runs are resumable)."""
    if out.exists():
        return
    partial = out.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    env = {**os.environ, "PBRL_TEST_SEED": str(seed), "PBRL_TEST_THREADS": str(threads),
           "PBRL_MARGINS_OUT": str(partial), "OMP_NUM_THREADS": str(threads)}
    if threads > 1:  # the second floating-point order: see SECOND_ORDER
        env.update(SECOND_ORDER)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "learning", "tests"]
    if select:
        cmd += ["-k", select]
    print(f"seed {seed}, {threads} thread(s): {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 5) or not partial.exists():  # 5: nothing selected
        sys.exit(f"test_margins: pytest failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}")
    partial.rename(out)


def load_rows(folder: Path) -> list[dict]:
    """Every recorded row; for the same (test, quantity, seed, threads) the newest file wins."""
    rows: dict[tuple, dict] = {}
    for path in sorted(folder.rglob("*.jsonl"), key=lambda p: p.stat().st_mtime):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            key = row["test"], row["quantity"], row["seed"], row["threads"]
            rows.pop(key, None)  # re-inserted last: the newest row of each key comes last in its group
            rows[key] = row
    return list(rows.values())


def margin_table(rows: list[dict]) -> str:
    """Markdown: one line per (test, quantity) with its values, threshold, worst value and margin in std."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["test"], row["quantity"]), []).append(row)
    lines = ["| test | quantity | runs | mean ± std | worst | check | margin (std) |", "|---|---|---|---|---|---|---|"]
    for (test, quantity), group in sorted(groups.items()):
        values = [r["value"] for r in sorted(group, key=lambda r: (r["threads"], r["seed"]))]
        op, threshold = group[-1]["op"], group[-1]["threshold"]  # the newest run's: the test as it stands
        worst = min(values) if op.startswith(">") else max(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        gap = (worst - threshold) if op.startswith(">") else (threshold - worst)
        margin = "∞" if std == 0 and gap > 0 else ("fails" if gap <= 0 else f"{gap / std:.1f}")
        label = f"{quantity} (known-bad)" if group[0]["bad"] else quantity
        lines.append(f"| `{test}` | {label} | {len(values)} | {statistics.mean(values):.3f} ± {std:.3f} | "
                     f"{worst:.3f} | {op} {threshold} | {margin} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--threads", default="1,2")
    p.add_argument("-k", dest="select", help="pytest -k expression: only these learning tests")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "margins")
    p.add_argument("--table", type=Path, help="write the table into this markdown file between the markers "
                   "<!-- margins --> and <!-- /margins -->")
    p.add_argument("--table-only", action="store_true", help="run nothing: tabulate the runs already under --out")
    args = p.parse_args()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", args.select or "all").strip("-")
    for threads in [] if args.table_only else map(int, args.threads.split(",")):
        for seed in map(int, args.seeds.split(",")):
            folder = args.out / slug
            folder.mkdir(parents=True, exist_ok=True)
            run_pytest(folder / f"seed{seed}-threads{threads}.jsonl", seed, threads, args.select)
    table = margin_table(load_rows(args.out))
    print(table)
    if args.table:
        text = args.table.read_text()
        start, end = "<!-- margins -->", "<!-- /margins -->"
        if start not in text or end not in text:
            sys.exit(f"test_margins: {args.table}: markers: got none, expected {start} ... {end}")
        head, rest = text.split(start, 1)
        args.table.write_text(f"{head}{start}\n{table}\n{end}{rest.split(end, 1)[1]}")


if __name__ == "__main__":
    main()

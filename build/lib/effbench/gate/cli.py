"""`effbench gate`: argument definitions and the command (effbench.cli wires them in)."""

from __future__ import annotations

import argparse
import sys

EXIT_PASS, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2

HELP = """\
Compare a candidate's runs with a baseline's, pair by pair (model × technique ×
scenario) and metric by metric, using every repeat sample: a one-sided
Mann-Whitney U test against the baseline shifted by the tolerance (or a
bootstrap interval of the ratio of medians). Each check is pass, regression,
improvement or inconclusive (too few samples, estimate vs measurement, a change
the repeats cannot confirm).

Selectors: run:ID[,ID]  tag:NAME  branch:NAME (runs tagged branch:NAME)
           commit:SHA (software.effbench_commit)  file:PATH (JSON export or records directory)

Exit code: 0 pass (inconclusive checks warn), 1 regression (or inconclusive
with --strict), 2 usage error. The Markdown summary is appended to
$GITHUB_STEP_SUMMARY when set.

Examples:
  effbench gate --candidate tag:pr-123 --baseline branch:main --gate effbench-gate.yaml
  effbench gate --candidate commit:3f2a9c1 --baseline commit:cb60877 --strict
  effbench gate --candidate file:results/pr.json --baseline file:results/main.json --markdown gate.md
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--candidate", required=True, metavar="SELECTOR", help="the runs under test")
    p.add_argument("--baseline", required=True, metavar="SELECTOR", help="the runs to compare against")
    p.add_argument("--gate", metavar="FILE", help="YAML gate file: metrics and tolerances (default: built-in "
                                                  "tolerances for latency, throughput, peak memory, size, perplexity)")
    p.add_argument("--match", choices=["names", "config"], help="pair runs by model × technique × scenario "
                                                                "(default) or by config hash")
    p.add_argument("--method", choices=["mannwhitney", "bootstrap"], help="statistical test (default mannwhitney)")
    p.add_argument("--pool", choices=["repeats", "runs"], help="samples: the newest run's repeats (default), or "
                                                               "one median per run of the pair (robust to drift "
                                                               "between runs; needs ≥ min-samples runs per side)")
    p.add_argument("--alpha", type=float, help="one-sided significance per check (default 0.05)")
    p.add_argument("--min-samples", type=int, help="fewer repeats on a side make a check inconclusive (default 5)")
    p.add_argument("--strict", action="store_true", help="fail (exit 1) on inconclusive checks too")
    p.add_argument("--markdown", metavar="PATH", help="also write the Markdown summary here")


def cmd_gate(args: argparse.Namespace) -> int:
    from effbench.gate.config import GateConfigError, load_gate
    from effbench.gate.core import GateUsageError, run_gate
    from effbench.gate.render import print_result, write_markdown
    from effbench.store import open_store

    try:
        gate = load_gate(args.gate).with_options(match=args.match, method=args.method, alpha=args.alpha,
                                                 min_samples=args.min_samples, pool=args.pool)
        result = run_gate(args.candidate, args.baseline, gate, lambda: open_store(args.db, read_only=True))
    except (GateConfigError, GateUsageError, FileNotFoundError) as e:
        print(f"effbench gate: {e}", file=sys.stderr)
        return EXIT_USAGE
    print_result(result, args.strict)
    write_markdown(result, args.markdown, args.strict)
    if result.inconclusive and not args.strict:
        print(f"effbench gate: warning: {len(result.inconclusive)} checks inconclusive "
              f"({'; '.join(sorted({c.detail.split(':')[0] for c in result.inconclusive}))}); "
              "they do not fail the gate unless --strict", file=sys.stderr)
    for c in result.regressions:
        print(f"effbench gate: REGRESSION {c.pair}: {c.metric} {c.detail}", file=sys.stderr)
    return result.exit_code(args.strict)

"""`effbench gate`: argument definitions and the command (effbench.cli wires them in)."""

from __future__ import annotations

import argparse
import re
import sys

from effbench.gate.options import MATCH_MODES, PROCESS_TESTS

EXIT_PASS, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2

HELP = """\
Compare a candidate's runs with a baseline's, pair by pair (model × technique ×
scenario) and metric by metric, using every repeat sample: a one-sided
Mann-Whitney U test against the baseline shifted by the tolerance (or a
percentile bootstrap of the ratio of medians). Each check is pass, regression,
improvement or inconclusive (too few samples, estimate vs measurement, a change
the repeats cannot confirm).

Selectors: run:ID[,ID]  tag:NAME[,NAME] (every tag)  branch:NAME (runs tagged branch:NAME)
           commit:SHA (software.effbench_commit)  file:PATH (JSON export or records directory)

--match ab re-reads runs made by `effbench ab` (one configuration per side, one
run per process): one median per process, processes paired by their pair:<k>
tags, a t-test (or sign-flip permutation test) on the log ratios with the
tolerance as margin, the session's looks replayed with their alpha spending.
A check the runner cannot resolve at its tolerance is inconclusive ("runner too
noisy"), with the processes it would need. Every gate controls the false alarms
of its whole set of checks with Benjamini–Hochberg.

Exit code: 0 pass (inconclusive checks warn), 1 regression (or inconclusive
with --strict), 2 usage error. The Markdown summary is appended to
$GITHUB_STEP_SUMMARY when set.

Examples:
  effbench gate --candidate tag:pr-123 --baseline branch:main --gate effbench-gate.yaml
  effbench gate --candidate commit:3f2a9c1 --baseline commit:cb60877 --strict
  effbench gate --candidate file:results/pr.json --baseline file:results/main.json --markdown gate.md
  effbench gate --candidate tag:ab:3f2a9c1d,side:B --baseline tag:ab:3f2a9c1d,side:A --match ab
"""


def add_gate_file_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by `effbench gate` and `effbench ab`."""
    p.add_argument("--gate", metavar="FILE", help="YAML gate file: metrics and tolerances (default: built-in "
                                                  "tolerances for latency, throughput, peak memory, size, perplexity)")
    p.add_argument("--alpha", type=float, help="one-sided significance, for the whole set of checks (default 0.05)")
    p.add_argument("--process-test", choices=list(PROCESS_TESTS),
                   help="process-level test: t (default) or permutation (sign flips; no p below 2^-pairs)")
    p.add_argument("--power", type=float, help="power behind the minimum detectable change (default 0.95)")
    p.add_argument("--strict", action="store_true", help="fail (exit 1) on inconclusive checks, or on no check")
    p.add_argument("--markdown", metavar="PATH", help="also write the Markdown summary here")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--candidate", required=True, metavar="SELECTOR", help="the runs under test")
    p.add_argument("--baseline", required=True, metavar="SELECTOR", help="the runs to compare against")
    add_gate_file_arguments(p)
    p.add_argument("--match", choices=list(MATCH_MODES), help="pair runs by model × technique × scenario "
                                                              "(default), by config hash, or as `effbench ab` "
                                                              "sessions (one median per process, pair tags)")
    p.add_argument("--method", choices=["mannwhitney", "bootstrap"], help="statistical test (default mannwhitney)")
    p.add_argument("--pool", choices=["repeats", "runs"], help="samples: the newest run's repeats (default), or "
                                                               "one median per run of the pair (robust to drift "
                                                               "between runs; needs ≥ min-samples runs per side)")
    p.add_argument("--min-samples", type=int, help="fewer repeats on a side make a check inconclusive (default 5)")


def load_gate_options(args: argparse.Namespace, **options):
    """The gate file with the command line's settings over it (GateConfigError on bad ones)."""
    from effbench.gate.config import load_gate

    return load_gate(args.gate).with_options(alpha=args.alpha, process_test=args.process_test, power=args.power,
                                             **options)


def report(result, args: argparse.Namespace, command: str = "effbench gate") -> int:
    """Table, Markdown summary, warnings and regressions on stderr; returns the exit code."""
    from effbench.gate.render import NO_CHECK, print_result, write_markdown

    print_result(result, args.strict)
    write_markdown(result, args.markdown, args.strict)
    if not result.checks:
        print(f"{command}: WARNING: {NO_CHECK}" + ("" if args.strict else "; exit 0 only because --strict is off"),
              file=sys.stderr)
    if result.inconclusive and not args.strict:
        print(f"{command}: warning: {len(result.inconclusive)} checks inconclusive "
              f"({'; '.join(sorted({re.split(r'[:(]', c.detail)[0].strip() for c in result.inconclusive}))}); "
              "they do not fail the gate unless --strict", file=sys.stderr)
    for c in result.regressions:
        print(f"{command}: REGRESSION {c.pair}: {c.metric} {c.detail}", file=sys.stderr)
    return result.exit_code(args.strict)


def cmd_gate(args: argparse.Namespace) -> int:
    from effbench.gate.config import GateConfigError
    from effbench.gate.core import GateUsageError, run_gate
    from effbench.store import open_store

    try:
        gate = load_gate_options(args, match=args.match, method=args.method, min_samples=args.min_samples,
                                 pool=args.pool)
        result = run_gate(args.candidate, args.baseline, gate, lambda: open_store(args.db, read_only=True))
    except (GateConfigError, GateUsageError, FileNotFoundError) as e:
        print(f"effbench gate: {e}", file=sys.stderr)
        return EXIT_USAGE
    return report(result, args)

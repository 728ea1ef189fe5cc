"""The gate's setting names, in a module of their own: the CLI builds its parser from
them without importing the statistics (and scipy)."""

METHODS = ("mannwhitney", "bootstrap")  # tests of repeat samples (effbench.gate.stats)
PROCESS_TESTS = ("t", "permutation")  # tests of process medians (effbench.gate.process_stats)
MATCH_MODES = ("names", "config", "ab")
POOL_MODES = ("repeats", "runs")

# Tags `effbench ab` puts on its runs, which the plain gate reads back (--match ab).
SESSION_TAG, SIDE_TAG, PAIR_TAG, LOOKS_TAG = "ab:", "side:", "pair:", "ab-looks:"


def looks_tag(plan) -> str:
    """The planned looks (processes per side at each) as a tag, e.g. ab-looks:5/10/15/20."""
    return LOOKS_TAG + "/".join(str(n) for n in plan)

"""`effbench`: run, list, show, export and import benchmark runs."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields, is_dataclass

DESCRIPTION = """\
effbench measures what an LLM efficiency technique costs and saves: memory,
compute (FLOPs, MFU, PCU), latency (TTFT, TPOT, ITL), throughput, energy and
compression, plus quality, each stored with how it was obtained.

Commands:
  run      benchmark one model × technique pair (Hydra overrides), or a sweep
           with --multirun. `effbench run --help` lists config groups and keys.
  list     table of stored runs
  show     one run in full: config, hardware, every metric with its samples
  export   runs to JSON (full records), CSV or Parquet (one row per metric)
  import   JSON run records (validated; re-import adds nothing)
  gate     CI regression gate: candidate vs baseline runs, noise-aware (exit 1 on regression)
  leaderboard  the leaderboard website (Streamlit) over the store, read-only

Examples:
  effbench run                                  # tiny-llama × fp32 on this machine
  effbench run --multirun sweep=quick           # tiny-llama × fp32/bf16/fp16
  effbench run model=hf model.id=Qwen/Qwen2.5-0.5B technique=bf16 hardware.device=cuda
  effbench list --status failed
  effbench show 3f2a
  effbench export runs.parquet

The store is SQLite at results/effbench.db unless --db or $EFFBENCH_DB_URL
names another SQLAlchemy URL (e.g. postgresql+psycopg://user@host/db).
"""

EXIT_CONFIG = 2


def _root_cause(e: BaseException) -> BaseException:
    while e.__cause__ is not None:
        e = e.__cause__
    return e


def explain_config_error(e: BaseException) -> str:
    """One readable message naming the bad key and what is valid there."""
    root = _root_cause(e)
    # Hydra appends its search path to missing-option errors: noise for a user.
    msg = str(e).split("\nConfig search path:")[0].strip()
    if root is not e and str(root).strip() not in msg:
        msg += f"\n{str(root).strip()}"
    object_type = getattr(root, "object_type", None)
    if "not in" in str(root) and object_type is not None and is_dataclass(object_type):
        full_key = getattr(root, "full_key", "") or ""
        parent = full_key.rpartition(".")[0]
        valid = ", ".join(f.name for f in fields(object_type))
        msg += f"\nValid keys in {parent or 'the top level'}: {valid}"
    return f"effbench: bad config\n{msg}\n(see `effbench run --help` for groups and keys)"


def cmd_run(argv: list[str]) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from effbench.execute import ConfigError

    # Let config errors reach us instead of Hydra's exit(1), to exit 2 with a clear message.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    from effbench import hydra_app

    sys.argv = ["effbench run", *argv]
    try:
        hydra_app.main()
    except (HydraException, OmegaConfBaseException, ConfigError) as e:
        print(explain_config_error(e), file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _store(args):
    from effbench.store import ResultStore

    return ResultStore(args.db, read_only=getattr(args, "read_only", False))


def cmd_list(args) -> int:
    from effbench.report import print_run_list

    runs = _store(args).runs(status=args.status, model=args.model, technique=args.technique,
                             scenario=args.scenario, tag=args.tag, limit=args.limit)
    print_run_list(runs)
    return 0


def cmd_show(args) -> int:
    from effbench.report import print_run

    try:
        print_run(_store(args).get(args.run))
    except KeyError as e:
        print(f"effbench: {e.args[0]}", file=sys.stderr)
        return 1
    return 0


def cmd_export(args) -> int:
    fmt = args.format or args.path.rsplit(".", 1)[-1]
    if fmt not in ("json", "csv", "parquet"):
        print(f"effbench: cannot tell the format of {args.path!r}; pass --format json|csv|parquet", file=sys.stderr)
        return EXIT_CONFIG
    n = _store(args).export(args.path, fmt)
    what = "runs" if fmt == "json" else "metric rows"
    print(f"exported {n} {what} to {args.path}")
    return 0


def cmd_import(args) -> int:
    from effbench.store import RecordError

    try:
        added, present = _store(args).import_json(args.path)
    except RecordError as e:
        print(f"effbench: {args.path}: {e} (nothing was imported)", file=sys.stderr)
        return 1
    print(f"imported {added} runs from {args.path} ({present} already present)")
    return 0


def cmd_leaderboard(args) -> int:
    """Become `streamlit run leaderboard/app.py` (through `python -m leaderboard`, which imports the
    pages first). The store URL goes by environment, so a password in it stays out of the process list."""
    from sqlalchemy.engine import make_url

    import leaderboard
    from effbench.store.store import default_url

    url = args.db or default_url()
    app = os.path.join(next(iter(leaderboard.__path__)), "app.py")
    print(f"effbench leaderboard: http://{args.host}:{args.port} (store {make_url(url).render_as_string()})",
          flush=True)
    os.execve(sys.executable, [sys.executable, "-m", "leaderboard", "run", app, "--server.headless", "true",
                               "--server.port", str(args.port), "--server.address", args.host,
                               "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"],
              {**os.environ, "EFFBENCH_DB_URL": url})


def cmd_gate(args) -> int:
    from effbench.gate.cli import cmd_gate as gate

    return gate(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="effbench", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="benchmark a pair or sweep (Hydra overrides; see `effbench run --help`)",
                   add_help=False)

    def with_db(sp):
        sp.add_argument("--db", metavar="URL", help="SQLAlchemy URL of the results store (default: $EFFBENCH_DB_URL "
                                                    "or sqlite:///results/effbench.db)")
        return sp

    ls = with_db(sub.add_parser("list", help="table of stored runs"))
    ls.add_argument("--status", choices=["ok", "failed", "skipped"])
    ls.add_argument("--model")
    ls.add_argument("--technique")
    ls.add_argument("--scenario")
    ls.add_argument("--tag")
    ls.add_argument("--limit", type=int, default=50, help="newest N runs (default 50)")
    ls.set_defaults(func=cmd_list, read_only=True)

    sh = with_db(sub.add_parser("show", help="one run in full"))
    sh.add_argument("run", help="run id or a unique prefix of it")
    sh.set_defaults(func=cmd_show, read_only=True)

    ex = with_db(sub.add_parser("export", help="export runs: .json (records), .csv / .parquet (one row per metric)"))
    ex.add_argument("path")
    ex.add_argument("--format", choices=["json", "csv", "parquet"], help="default: from the file extension")
    ex.set_defaults(func=cmd_export, read_only=True)

    im = with_db(sub.add_parser("import", help="import JSON run records (validated, idempotent)"))
    im.add_argument("path")
    im.set_defaults(func=cmd_import)

    from effbench.gate.cli import HELP as GATE_HELP, add_arguments as gate_arguments

    gt = with_db(sub.add_parser("gate", help="CI regression gate: candidate vs baseline (exit 1 on regression)",
                                description=GATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter))
    gate_arguments(gt)
    gt.set_defaults(func=cmd_gate)

    lb = with_db(sub.add_parser("leaderboard", help="the leaderboard website over the store (read-only)"))
    lb.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    lb.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    lb.set_defaults(func=cmd_leaderboard)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "run":
        return cmd_run(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""`effbench`: run, list, show, export and import benchmark runs."""

from __future__ import annotations

import argparse
import json
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
  list     table of stored runs (--columns, --json)
  show     one run in full: config, hardware, every metric with its samples
  compare  runs side by side against the first: real differences marked
  export   runs to JSON (full records), CSV or Parquet (one row per metric;
           --wide: one row per run with its config and hardware)
  import   JSON run records (validated; re-import adds nothing)
  migrate  create or upgrade a SQL store's schema
  gate     CI regression gate: candidate vs baseline runs, noise-aware (exit 1 on regression)
  ab       two sides (configs, checkouts, git refs) in interleaved fresh processes, then gated
  leaderboard  the leaderboard website (Streamlit) over the store, read-only

Examples:
  effbench run                                  # tiny-llama × fp32 on this machine
  effbench run --multirun sweep=quick           # tiny-llama × fp32/bf16/fp16
  effbench run model=hf model.id=Qwen/Qwen2.5-0.5B technique=bf16 hardware.device=cuda
  effbench list --status failed
  effbench list --columns id,technique,AL,latency.ttft_s --json
  effbench show 3f2a
  effbench compare 3f2a 9c01
  effbench export runs.parquet
  effbench export runs.csv --wide

The store is SQLite at results/effbench.db unless --db or $EFFBENCH_DB_URL
names another: sqlite:///PATH, postgresql+psycopg://user@host/db, or
json:///DIR (a directory of JSON records).
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


def run_help(overrides: list[str]) -> int:
    """`effbench run --help`: config groups, the composed config and examples. Composed here
    once (Hydra's own help composes the config again for every option of every group: seconds)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from effbench.hydra_app import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    text = cfg.hydra.help
    groups = sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra" and any(p.glob("*.yaml")))
    listing = "\n".join(f"{g.name}: {', '.join(sorted(f.stem for f in g.glob('*.yaml')))}" for g in groups)
    shown = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    print(f"{text.header}\nConfig groups (pick one with GROUP=OPTION):\n{listing}\n\n"
          f"Current config (override any key with KEY=VALUE):\n{OmegaConf.to_yaml(shown)}\n{text.footer}")
    return 0


def cmd_run(argv: list[str]) -> int:
    from effbench import quiet

    quiet.progress_bars_on_terminals_only()  # before anything imports tqdm
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from effbench.errors import ConfigError

    # Let config errors reach us instead of Hydra's exit(1), to exit 2 with a clear message.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        if {"--help", "-h"} & set(argv):
            return run_help([a for a in argv if not a.startswith("-")])
        from effbench import hydra_app

        sys.argv = ["effbench run", *argv]
        hydra_app.main()
    except (HydraException, OmegaConfBaseException, ConfigError) as e:
        print(explain_config_error(e), file=sys.stderr)
        return EXIT_CONFIG
    # A single run that failed says so in its exit status (a sweep goes on and reports its failures).
    return 1 if hydra_app.last_status == "failed" and "--multirun" not in argv and "-m" not in argv else 0


def _open(args, read_only: bool = True):
    """The command's store; StoreError (exit 2) when it cannot be opened as asked."""
    from effbench.store import open_store

    return open_store(args.db, read_only=read_only)


def cmd_list(args) -> int:
    from effbench.report import DEFAULT_LIST_COLUMNS, list_column, list_json, list_markdown, print_run_list

    keys = [k.strip() for k in args.columns.split(",") if k.strip()] if args.columns else list(DEFAULT_LIST_COLUMNS)
    try:
        for key in keys:
            list_column(key)
    except KeyError as e:
        print(f"effbench: {e.args[0]}", file=sys.stderr)
        return EXIT_CONFIG
    with _open(args) as store:
        runs = store.runs(status=args.status, model=args.model, technique=args.technique, scenario=args.scenario,
                          tag=args.tag, sweep_id=args.sweep, limit=args.limit)
    if args.oldest_first:
        runs.reverse()
    if args.json:
        print(json.dumps(list_json(runs, keys), indent=1, allow_nan=False, default=str))
    elif args.markdown:
        print(list_markdown(runs, keys), end="")
    else:
        print_run_list(runs, keys, "oldest first" if args.oldest_first else "newest first")
    return 0


def _get(store, run_id: str):
    """The run, or None after saying on stderr that there is none."""
    try:
        return store.get(run_id)
    except KeyError as e:
        print(f"effbench: {e.args[0]}; `effbench list` shows the stored runs", file=sys.stderr)
        return None


def cmd_show(args) -> int:
    from effbench.report import print_run

    with _open(args) as store:
        record = _get(store, args.run)
    if record is None:
        return EXIT_CONFIG
    print_run(record)
    return 0


def cmd_compare(args) -> int:
    from effbench.report import print_compare

    with _open(args) as store:
        records = [_get(store, i) for i in args.runs]
    if None in records:
        return EXIT_CONFIG
    print_compare(records)
    return 0


def cmd_export(args) -> int:
    from effbench.store.export import export_format, write_wide

    fmt = export_format(args.path, args.format)
    if args.wide:
        if fmt == "json":
            print(f"effbench: --wide writes csv or parquet (one row per run), not {fmt}: JSON records are already "
                  "one per run", file=sys.stderr)
            return EXIT_CONFIG
        with _open(args) as store:
            n = write_wide(store.runs(), args.path, fmt)
        print(f"exported {n} runs (one row each: config, hardware, every metric) to {args.path}")
        return 0
    with _open(args) as store:
        n = store.export(args.path, fmt)
    print(f"exported {n} {'runs' if fmt == 'json' else 'metric rows'} to {args.path}")
    return 0


def cmd_import(args) -> int:
    from effbench.store import RecordError
    from effbench.store.records_io import read_records

    try:
        # Every record is validated before the store is opened: a rejected import creates nothing.
        loaded = read_records(args.path, skip_invalid=args.skip_invalid)
    except RecordError as e:
        print(f"effbench: {e} (nothing was imported; --skip-invalid imports the valid files of a directory)",
              file=sys.stderr)
        return EXIT_CONFIG
    for name, reason in loaded.skipped:
        print(f"effbench: skipped {name}: {reason}", file=sys.stderr)
    with _open(args, read_only=False) as store:
        added, present = store.import_records(loaded.records)
    skipped = f", {len(loaded.skipped)} files skipped as invalid" if loaded.skipped else ""
    print(f"imported {added} runs from {args.path} ({present} already present{skipped})")
    return 0


def cmd_migrate(args) -> int:
    with _open(args, read_only=False) as store:
        if not hasattr(store, "migrate"):
            print(f"effbench: {store.url} is a directory of JSON records: it has no schema to upgrade")
            return 0
        before, after = store.migrate()
    print(f"{store.url}: schema {before or '(none)'} → {after}" if before != after else
          f"{store.url}: schema {after}, already current")
    return 0


def cmd_leaderboard(args) -> int:
    """Become `streamlit run leaderboard/app.py` (through `python -m leaderboard`, which imports the
    pages first). The store URL goes by environment, so a password in it stays out of the process list."""
    import leaderboard
    from effbench.store.base import check_url

    url = check_url(args.db)
    shown = url if "@" not in url else url.split("://", 1)[0] + "://***@" + url.split("@", 1)[1]
    app = os.path.join(next(iter(leaderboard.__path__)), "app.py")
    print(f"effbench leaderboard: http://{args.host}:{args.port} (store {shown})", flush=True)
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
    ls.add_argument("--columns", metavar="COL,COL", help="columns to show: run fields (id, created, status, axis, "
                    "scenario, model, technique, hardware, engine, workload, tags, sweep, duration, error), "
                    "headline figures (AL, tput, mem, model_mem, energy, J/tok, ppl, compression) or any metric name "
                    "(default: id,created,status,scenario,model,technique,AL,tput,mem,ppl)")
    fmt = ls.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="the rows as JSON (metric columns with unit, interval, "
                                                         "source and flags) instead of a table")
    fmt.add_argument("--markdown", action="store_true", help="the table in Markdown (e.g. for a results page)")
    ls.add_argument("--sweep", metavar="DIR", help="only the runs of this sweep (its Hydra sweep directory, as the "
                                                   "record's sweep field holds it)")
    ls.add_argument("--oldest-first", action="store_true", help="in the order the runs were made")
    ls.set_defaults(func=cmd_list)

    sh = with_db(sub.add_parser("show", help="one run in full"))
    sh.add_argument("run", help="run id or a unique prefix of it")
    sh.set_defaults(func=cmd_show)

    cp = with_db(sub.add_parser("compare", help="runs side by side against the first, real differences marked",
                                description="Every metric of the runs side by side; each run judged against the "
                                            "first by the leaderboard's rules: a difference counts only outside "
                                            "both 95%% intervals and beyond the metric's practical threshold. Runs "
                                            "of another scenario or workload are shown, not judged."))
    cp.add_argument("runs", nargs="+", metavar="RUN", help="run ids or unique prefixes; the first is the baseline")
    cp.set_defaults(func=cmd_compare)

    ex = with_db(sub.add_parser("export", help="export runs: .json (records), .csv / .parquet (one row per metric, "
                                               "or per run with --wide)"))
    ex.add_argument("path")
    ex.add_argument("--format", choices=["json", "csv", "parquet"], help="default: from the file extension")
    ex.add_argument("--wide", action="store_true", help="one row per run: its fields, config.* and hardware.* "
                                                        "flattened, and per metric its value, interval, n, source "
                                                        "and invalid reason")
    ex.set_defaults(func=cmd_export)

    im = with_db(sub.add_parser("import", help="import JSON run records (validated, idempotent)"))
    im.add_argument("path", help="a JSON export, a record file, or a directory of them (a json:// store)")
    im.add_argument("--skip-invalid", action="store_true",
                    help="import the valid files of a directory and list each invalid one with its reason "
                         "(default: one invalid file refuses the whole import)")
    im.set_defaults(func=cmd_import)

    mg = with_db(sub.add_parser("migrate", help="create or upgrade a SQL store's schema to this effbench's version"))
    mg.set_defaults(func=cmd_migrate)

    from effbench.gate.cli import HELP as GATE_HELP, add_arguments as gate_arguments

    gt = with_db(sub.add_parser("gate", help="CI regression gate: candidate vs baseline (exit 1 on regression)",
                                description=GATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter))
    gate_arguments(gt)
    gt.set_defaults(func=cmd_gate)

    from effbench.gate.ab import HELP as AB_HELP, add_arguments as ab_arguments, cmd_ab

    ab = with_db(sub.add_parser("ab", help="A/B in interleaved fresh processes, then gated (exit 1 on regression)",
                                description=AB_HELP, formatter_class=argparse.RawDescriptionHelpFormatter))
    ab_arguments(ab)
    ab.set_defaults(func=cmd_ab)

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
    from effbench.errors import ConfigError

    try:
        return args.func(args)
    except ConfigError as e:  # a store that cannot be opened as asked, an export format, ...
        print(f"effbench: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:  # `effbench list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0


if __name__ == "__main__":
    sys.exit(main())

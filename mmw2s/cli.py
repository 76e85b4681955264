"""`mmw2s COMMAND [--config FILE] [key.sub=value ...]` — the command line of every registered command
(`mmw2s.commands`): the stages and `mmw2s run`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from mmw2s.config import ConfigError, load_config
from mmw2s.schema import describe
from mmw2s.console import level_of, setup_logging
from mmw2s.errors import StageError
from mmw2s.interrupts import Terminated, handle_sigterm, stop_descendants
from mmw2s.commands import COMMANDS, Command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmw2s",
        description="Multimodal weak-to-strong caption bootstrapping. Each stage reads a YAML "
                    "config (its default lives in configs/) with key=value overrides on top.",
        epilog="Run 'mmw2s STAGE --help' for a stage's keys and defaults.")
    sub = parser.add_subparsers(dest="command", metavar="STAGE", required=True)
    for command in COMMANDS.values():
        p = sub.add_parser(command.name, help=command.summary, description=command.summary,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=_keys_help(command))
        p.add_argument("--config", "-c", default=None,
                       help=f"YAML config (default: configs/{command.default_config})")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="override a config key, e.g. seed=3 web.samples=2000")
        p.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors")
        p.add_argument("--verbose", "-v", action="store_true", help="debug messages too")
    return parser


def _keys_help(command: Command) -> str:
    """The epilog of `mmw2s COMMAND --help`: every key with type, default and help."""
    try:
        rows = describe(command.load_schema())
    except ImportError as exn:  # a command whose dependencies are missing still lists itself
        return f"(keys unavailable: {exn})"
    width = max(len(k) for k, *_ in rows)
    lines = ["config keys (type = default):"]
    for key, tp, default, help_text in rows:
        lines.append(f"  {key:<{width}}  {tp} = {default!r}" + (f"\n  {'':<{width}}    {help_text}" if help_text else ""))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mmw2s` console script; returns the exit code.

    Errors a user or the environment causes are one line naming the file or shard: 2 for bad
    input (the config, an input pattern that matches nothing, a broken benchmark folder), 1 for
    a stage that cannot go on (a full disk, a permission, a corrupt state file). SIGTERM and Ctrl-C stop the stage cleanly (143, 130). A bug keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    handle_sigterm()
    setup_logging(level_of(args.quiet, args.verbose))
    command = COMMANDS[args.command]
    try:
        cfg = load_config(command.load_schema(), args.config or command.default_config_path,
                          args.overrides)
    except ConfigError as exn:
        print(f"mmw2s {command.name}: config error: {exn}", file=sys.stderr)
        return 2
    try:
        command.load_runner()(cfg)
    except KeyboardInterrupt as exn:  # Ctrl-C, or SIGTERM as `Terminated`
        stop_descendants()
        what = "SIGTERM" if isinstance(exn, Terminated) else "Ctrl-C"
        print(f"mmw2s {command.name}: stopped by {what}; {resume_hint(cfg)}", file=sys.stderr)
        return getattr(exn, "exit_code", 130)
    except Exception as exn:  # noqa: BLE001 - one line for what the user can act on, else re-raised
        message = user_error(exn)
        if message is None:
            raise
        print(f"mmw2s {command.name}: {message}", file=sys.stderr)
        return getattr(exn, "exit_code", 1)
    return 0


def user_error(exn: Exception) -> str | None:
    """The one-line message of an error the user or the environment caused, None for a bug."""
    from mmw2s.data_pipelines import ShardError, StateFileError  # loads torch: not for `mmw2s --help`

    if isinstance(exn, StageError):
        return str(exn)
    if isinstance(exn, StateFileError):
        return f"{exn}: delete that file, or rerun with another out="
    if isinstance(exn, ShardError) and isinstance(exn.__cause__, OSError):
        return str(exn)  # names the shard: a full disk, a permission, a vanished folder
    if isinstance(exn, OSError):
        where = " ".join(str(f) for f in (exn.filename, exn.filename2) if f)
        return f"{exn.strerror or exn}" + (f": {where}" if where else "")
    return None


def resume_hint(cfg: object) -> str:
    """What a stopped stage kept, from its run folder: complete shards (their stats files)."""
    out = getattr(cfg, "out", None)
    if not out or not Path(out).is_dir():
        return "nothing was written yet"
    done = len(list(Path(out).glob("*/*_stats.json")))
    return (f"{done} complete shard(s) are kept in {out} and partial ones were removed; " if done else
            f"what is complete in {out} is kept; ") + "rerun the same command to resume"


if __name__ == "__main__":
    sys.exit(main())

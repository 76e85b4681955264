"""`mmw2s STAGE [--config FILE] [key.sub=value ...]` — the command line of every stage."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mmw2s.config import ConfigError, describe, load_config
from mmw2s.console import level_of, setup_logging
from mmw2s.errors import StageError
from mmw2s.stages import STAGES, Stage


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmw2s",
        description="Multimodal weak-to-strong caption bootstrapping. Each stage reads a YAML "
                    "config (its default lives in configs/) with key=value overrides on top.",
        epilog="Run 'mmw2s STAGE --help' for a stage's keys and defaults.")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage in STAGES.values():
        p = sub.add_parser(stage.name, help=stage.summary, description=stage.summary,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=_keys_help(stage))
        p.add_argument("--config", "-c", default=None,
                       help=f"YAML config (default: configs/{stage.default_config})")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="override a config key, e.g. seed=3 web.samples=2000")
        p.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors")
        p.add_argument("--verbose", "-v", action="store_true", help="debug messages too")
    return parser


def _keys_help(stage: Stage) -> str:
    """The epilog of `mmw2s STAGE --help`: every key with type, default and help."""
    try:
        rows = describe(stage.load_schema())
    except ImportError as exn:  # a stage whose dependencies are missing still lists itself
        return f"(keys unavailable: {exn})"
    width = max(len(k) for k, *_ in rows)
    lines = ["config keys (type = default):"]
    for key, tp, default, help_text in rows:
        lines.append(f"  {key:<{width}}  {tp} = {default!r}" + (f"\n  {'':<{width}}    {help_text}" if help_text else ""))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mmw2s` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    setup_logging(level_of(args.quiet, args.verbose))
    stage = STAGES[args.stage]
    try:
        cfg = load_config(stage.load_schema(), args.config or stage.default_config_path,
                          args.overrides)
    except ConfigError as exn:
        print(f"mmw2s {stage.name}: config error: {exn}", file=sys.stderr)
        return 2
    try:
        stage.load_runner()(cfg)
    except StageError as exn:
        print(f"mmw2s {stage.name}: {exn}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m lightning_losses plot LOG_DIR [-o curves.png]``: per-loss curves of a logged run."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_losses")
    commands = parser.add_subparsers(dest="command", required=True)
    plot = commands.add_parser("plot", help="draw one panel per loss from a CSV or TensorBoard run")
    plot.add_argument("log_dir", help="a CSVLogger or TensorBoardLogger run directory")
    plot.add_argument("-o", "--out", default=None, help="PNG to write (default LOG_DIR/curves.png)")
    plot.add_argument(
        "--log-y",
        choices=("auto", "always", "never"),
        default="auto",
        help="log-scale y axes: auto (where a panel spans two decades or more), always, never",
    )
    args = parser.parse_args(argv)
    try:
        from lightning_losses.plot import plot_run
    except ImportError as error:
        print(f"plotting needs matplotlib: pip install matplotlib ({error})")
        return 2
    try:
        print(plot_run(args.log_dir, args.out, log_y=args.log_y))
    except (ValueError, FileNotFoundError) as error:
        print(f"nothing to plot: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``normkit`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``main(args) -> int``; this file only lists them, and imports a subcommand's
module only when that subcommand runs (the lab pulls in matplotlib and
scikit-learn, which ``normkit check`` does not need).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Add a subcommand by adding one line here.
SUBCOMMANDS = {
    "check": ("normkit.check", "conformance report of normkit against every installed peer"),
    "convert": (
        "normkit.convert_cli",
        "print the LRN layers of a Caffe/ONNX/TensorFlow model in "
        "every framework's terms, with porting warnings",
    ),
    "scale": ("normkit.scale_cli", "fit/apply data scalers (minmax, zscore, ...) to CSV/.npy"),
    "lab": ("normkit.lab.cli", "train with each normalization; tables and plots of the claims"),
    "bench": ("normkit.bench", "time normkit's backends against torch eager (ratios, GB/s, CSV)"),
}


# --- subcommands whose dependencies are an extra, not core (issue 10 item 7) ---
# name -> (extra, {import name: pip name}); checked before the subcommand runs so a plain
# install prints one line naming the extra instead of a ModuleNotFoundError traceback
EXTRAS = {
    "lab": ("lab", {"tqdm": "tqdm", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}),
}


def missing_extra(command: str):
    """One-line message naming what to install when ``command``'s extra is missing, else None."""
    if command not in EXTRAS:
        return None
    import importlib.util

    extra, needs = EXTRAS[command]
    missing = []
    for module, pip_name in needs.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(pip_name)
    if not missing:
        return None
    return (
        f"normkit {command}: missing {', '.join(missing)} (the [{extra}] extra); "
        f'install it with: pip install "normkit[{extra}]"'
    )


# ---


def build_parser(only=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normkit",
        description="normkit: normalization layers done right (LRN exact to every framework, "
        "BatchNorm/LayerNorm/GroupNorm/InstanceNorm/RMSNorm, data scalers).",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"normkit {importlib.import_module('normkit').__version__}",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if only is not None and name != only:
            continue  # its module is imported only when it runs (keeps start-up fast)
        mod = importlib.import_module(module)
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(p)
    return parser


def main(argv=None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    chosen = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(chosen if chosen in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    message = missing_extra(args.command)
    if message is not None:
        print(message, file=sys.stderr)
        return 1
    module = importlib.import_module(args._module)
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""``normkit lab [EXPERIMENT]``: train with each normalization and show the documents' claims.

Experiments (one command each; every one prints a table and writes
``results.json`` plus PNG plots into ``--out``):

- ``compare`` (the default): one run per normalization, same seed/init/split;
- ``batch-size``: BatchNorm vs GroupNorm vs LayerNorm at batch sizes 2..128;
- ``ics``: per-layer pre-activation mean/std over training, without and with BN;
- ``scale-invariance``: source document 2's BN(aWu) = BN(Wu) checked on a real layer;
- ``lrn-effect``: none vs LRN vs BN over several seeds;
- ``scaling``: the input data itself (wine, breast cancer): raw vs min-max, z-score,
  1/(1+x), log10, atan for logistic regression and a sigmoid MLP trained by
  full-batch gradient descent; loss contours, saturation, the min-max refit caveat.
- ``report``: every experiment (reusing ``results.json`` already under ``--out``)
  on one self-contained ``report.html``: claim, source, measurement, figure, verdict.

Data-parallel: ``torchrun --nproc-per-node 2 -m normkit lab --norms batch``
(gloo on CPU; ``--batch-size`` is the global batch; "batch" becomes
"sync-batch").
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time

SCHEMA = "normkit-lab/1"
# experiments that do not train on the digits (or on --data): they bring their own data
STANDALONE = ("scaling", "report")


def _int_list(text: str):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _name_list(text: str):
    return [v.strip() for v in text.split(",") if v.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .experiments import EXPERIMENTS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.split("\n\n", 1)[1]
    parser.add_argument(
        "experiment",
        nargs="?",
        default="compare",
        choices=list(EXPERIMENTS) + list(STANDALONE),
        help="which experiment (default: compare)",
    )
    parser.add_argument(
        "--norms",
        type=_name_list,
        default=None,
        help="comma-separated normkit.create_norm names (default: the "
        "experiment's set; compare uses none,lrn,lrn-within,batch,group,"
        "layer,instance,rms)",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="epochs per run (default: per experiment, 8 for compare)",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=32, help="global mini-batch size (default 32)"
    )
    parser.add_argument(
        "--batch-sizes",
        type=_int_list,
        default=None,
        help="batch-size experiment: sizes to try (default 2,4,8,16,32,64,128)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=0.01,
        help="SGD learning rate at batch 32, momentum 0.9 (default 0.01)",
    )
    parser.add_argument(
        "--depth",
        choices=["deep", "shallow"],
        default=None,
        help="deep = 6 conv layers (default), shallow = AlexNet's 2-block shape",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for init, order, dropout")
    parser.add_argument(
        "--seeds",
        type=_positive_int,
        default=None,
        help="lrn-effect: number of seeds (default 3); batch-size: seeds "
        "averaged per cell (default 1)",
    )
    parser.add_argument(
        "--groups", type=_positive_int, default=4, help="GroupNorm's num_groups (default 4)"
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.2,
        help="dropout in the classifier head (default 0.2; AlexNet's 0.5 on "
        "this 64-feature head stalls GroupNorm/LayerNorm, see README)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="loss threshold for the 'steps to loss<' column (default 0.5)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch.set_num_threads (default: $OMP_NUM_THREADS if set, else 1)",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="FILE.npz",
        help="your own data: arrays x [N, C, H, W] and y [N] (integer labels)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output directory (default lab-out/<experiment>; report: "
        "lab-out, holding one directory per experiment)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="seconds, not minutes: 1 epoch on 256 images, small grids",
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="report: run every experiment again even where --out already holds its results.json",
    )


def _check_norms(norms) -> None:
    import normkit

    for name in norms or []:
        try:
            normkit.create_norm(name, 8)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(
                f"--norms: {name!r} is not a normalization normkit.create_norm knows ({exc})"
            ) from exc


def _clean(obj):
    """JSON-safe copy: tensors/numpy scalars to floats, NaN/inf to null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def environment(device: str, world_size: int) -> dict:
    import torch

    import normkit

    return {
        "normkit": normkit.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "device": device,
        "world_size": world_size,
    }


def write_results(result: dict, out_dir: str) -> str:
    path = os.path.join(out_dir, "results.json")
    with open(path, "w") as f:
        json.dump(_clean(result), f, indent=1)
    return path


def format_table(table: dict) -> str:
    cols = table["columns"]
    fmts = table.get("formats") or ["{}"] * len(cols)
    cells = [
        [
            ("-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v))
            for v, fmt in zip(row, fmts)
        ]
        for row in table["rows"]
    ]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        )
    return "\n".join(lines)


def _init_distributed(device: str) -> int:
    """Join the torchrun process group when launched by torchrun; return the world size."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return world_size


def run(args) -> dict:
    """Run the chosen experiment; return the result dict that results.json holds."""
    import torch

    from .data import load
    from .experiments import EXPERIMENTS, Options
    from .train import world

    if args.threads:
        torch.set_num_threads(args.threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        # The lab's tensors are tiny (8x8 images, <= 64 channels): a second intra-op thread
        # buys nothing, and on a shared machine OpenMP threads spin-waiting for a busy core
        # made one epoch 10-30x slower (measured: 1.0-2.1 s/epoch with 1 thread vs 34-61 s
        # with 2 at load average 8 on 2 cores). --threads or OMP_NUM_THREADS override this.
        torch.set_num_threads(1)
    _check_norms(args.norms)
    if not 0.0 <= args.dropout < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.experiment in STANDALONE:
        return _run_standalone(args)
    world_size = _init_distributed(args.device)
    if world_size > 1 and args.experiment != "compare":
        raise ValueError(
            f"under torchrun only the default experiment (compare) runs "
            f"data-parallel; run {args.experiment!r} as a single process"
        )
    rank, _ = world()
    data = load(args.data)
    out_dir = args.out or os.path.join("lab-out", args.experiment)
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
    opts = Options(
        norms=args.norms,
        epochs=args.epochs,
        batch_size=args.batch_size,
        batch_sizes=args.batch_sizes,
        lr=args.lr,
        depth=args.depth,
        seed=args.seed,
        seeds=args.seeds,
        groups=args.groups,
        dropout=args.dropout,
        device=args.device,
        threshold=args.threshold,
        quick=args.quick,
        progress=args.progress,
    )
    t0 = time.perf_counter()
    # only rank 0 writes: the other processes train the same model and draw nothing
    result = EXPERIMENTS[args.experiment](data, opts, out_dir if rank == 0 else None)
    result = {
        "schema": SCHEMA,
        "experiment": result.pop("experiment"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": data.describe(),
        "environment": environment(args.device, world_size),
        "seconds": time.perf_counter() - t0,
        **result,
    }
    result["out_dir"] = out_dir
    return result


def _run_and_write(argv, out_dir) -> None:
    """Run one experiment from its command-line words and write its results.json
    (what ``normkit lab report`` does for each experiment it has no results for)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    write_results(run(parser.parse_args(argv)), out_dir)


def _run_standalone(args) -> dict:
    """``scaling`` (tabular data, NumPy) and ``report`` (all experiments on one page)."""
    from .experiments import Options

    if args.data:
        raise ValueError(
            f"--data applies to the image experiments; {args.experiment!r} "
            "uses its own data (drop --data)"
        )
    if args.experiment == "report":
        from .report import build_report

        return build_report(args, _run_and_write)
    from .scaling import describe_data, scaling

    out_dir = args.out or os.path.join("lab-out", args.experiment)
    os.makedirs(out_dir, exist_ok=True)
    opts = Options(seed=args.seed, quick=args.quick, progress=args.progress)
    t0 = time.perf_counter()
    result = scaling(opts, out_dir)
    result = {
        "schema": SCHEMA,
        "experiment": result.pop("experiment"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": describe_data(),
        "environment": environment("cpu", 1),
        "seconds": time.perf_counter() - t0,
        **result,
    }
    result["out_dir"] = out_dir
    return result


def main(args) -> int:
    from .train import world

    try:
        result = run(args)
    except ValueError as exc:
        print(f"normkit lab: error: {exc}", file=sys.stderr)
        return 2
    rank, _ = world()
    if result["experiment"] == "report":
        from .report import print_summary

        print_summary(result)
    elif rank == 0:
        out_dir = result["out_dir"]
        path = write_results(result, out_dir)
        data = result["data"]
        print(
            f"normkit lab {result['experiment']}: {data['name']}, {data['train']} train / "
            f"{data['test']} test, {result['environment']['world_size']} process(es), "
            f"{result['seconds']:.1f} s"
        )
        print()
        print(format_table(result["table"]))
        print()
        for note in result["notes"]:
            print(f"- {note}")
        print()
        files = [os.path.basename(path)] + result["plots"]
        print(f"wrote {', '.join(files)} to {os.path.abspath(out_dir)}")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0

"""SyncBatchNorm across real processes (gloo on CPU) against torch's BatchNorm on the
concatenated batch: outputs, input gradients, all-reduced weight gradients, running stats."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import normkit

from hostile import randn

C = 3


def _global_batch(seed, n, dtype):
    x = randn(n, C, 4, 3, seed=seed, mean=2.0, std=3.0).to(dtype)
    dy = randn(n, C, 4, 3, seed=seed + 1000).to(dtype)
    return x, dy


def _slices(sizes):
    out, start = [], 0
    for s in sizes:
        out.append(slice(start, start + s))
        start += s
    return out


def _worker(rank, world, init_file, out_dir, cfg):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    calls = {"all_gather": 0, "all_reduce": 0, "other": 0}
    for name in (
        "all_gather",
        "all_reduce",
        "all_gather_into_tensor",
        "broadcast",
        "reduce_scatter",
    ):
        original = getattr(dist, name)

        def counted(*a, _orig=original, _name=name, **k):
            calls[_name if _name in calls else "other"] += 1
            return _orig(*a, **k)

        setattr(dist, name, counted)
    groups = cfg.get("groups")
    group = None
    if groups:  # every rank creates every group, then uses its own
        made = [dist.new_group(g) for g in groups]
        group = next(m for g, m in zip(groups, made) if rank in g)
    dtype = cfg["dtype"]
    bn = normkit.SyncBatchNorm(C, momentum=cfg["momentum"], process_group=group).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    results = {"steps": [], "calls": []}
    for step, sizes in enumerate(cfg["steps"]):
        x, dy = _global_batch(100 + step, sum(sizes), dtype)
        part = _slices(sizes)[rank]
        xr = x[part].clone().requires_grad_(True)
        bn.zero_grad()
        before = dict(calls)
        y = bn(xr)
        fwd = {k: calls[k] - before[k] for k in calls}
        (y * dy[part]).sum().backward()
        bwd = {k: calls[k] - before[k] - fwd[k] for k in calls}
        results["steps"].append(
            {
                "y": y.detach(),
                "dx": xr.grad,
                "dw": bn.weight.grad.clone(),
                "db": bn.bias.grad.clone(),
                "running_mean": bn.running_mean.clone(),
                "running_var": bn.running_var.clone(),
                "num_batches_tracked": bn.num_batches_tracked.clone(),
            }
        )
        results["calls"].append((fwd, bwd))
    bn.eval()
    before = dict(calls)
    x, _ = _global_batch(999, 4, dtype)
    results["eval_y"] = bn(x).detach()
    results["eval_calls"] = {k: calls[k] - before[k] for k in calls}
    # untracked layers use batch statistics in eval: still local, still no communication
    untracked = normkit.SyncBatchNorm(C, track_running_stats=False, process_group=group)
    untracked = untracked.to(dtype).eval()
    before = dict(calls)
    results["untracked_eval_y"] = untracked(x[rank : rank + 2]).detach()
    results["untracked_eval_calls"] = {k: calls[k] - before[k] for k in calls}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def _run(world, cfg):
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_worker, args=(world, init_file, tmp, cfg), nprocs=world, join=True)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]


def _torch_reference(cfg, members, ranks_sizes):
    """torch.nn.BatchNorm2d on the concatenation of the member ranks' slices."""
    dtype = cfg["dtype"]
    bn = torch.nn.BatchNorm2d(C, momentum=cfg["momentum"]).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    out = []
    for step, sizes in enumerate(cfg["steps"]):
        x, dy = _global_batch(100 + step, sum(sizes), dtype)
        parts = _slices(sizes)
        xs = torch.cat([x[parts[r]] for r in members]).requires_grad_(True)
        dys = torch.cat([dy[parts[r]] for r in members])
        y = bn(xs)
        (y * dys).sum().backward()
        out.append(
            {
                "y": y.detach(),
                "dx": xs.grad,
                "dw": bn.weight.grad.clone(),
                "db": bn.bias.grad.clone(),
                "running_mean": bn.running_mean.clone(),
                "running_var": bn.running_var.clone(),
                "num_batches_tracked": bn.num_batches_tracked.clone(),
            }
        )
        bn.zero_grad()
    bn.eval()
    return out, bn(_global_batch(999, 4, dtype)[0]).detach()


def _check(results, cfg, members, tol):
    ref, ref_eval = _torch_reference(cfg, members, None)
    for step, _sizes in enumerate(cfg["steps"]):
        r = ref[step]
        ys = torch.cat([results[m]["steps"][step]["y"] for m in members])
        dxs = torch.cat([results[m]["steps"][step]["dx"] for m in members])
        assert (ys - r["y"]).abs().max() <= tol, step
        assert (dxs - r["dx"]).abs().max() <= tol, step
        # weight grads are local sums (as torch.nn.SyncBatchNorm): all-reduced they match
        dw = sum(results[m]["steps"][step]["dw"] for m in members)
        db = sum(results[m]["steps"][step]["db"] for m in members)
        assert (dw - r["dw"]).abs().max() <= tol * 10
        assert (db - r["db"]).abs().max() <= tol * 10
        for m in members:  # identical running stats on every rank, equal to torch's
            for key in ("running_mean", "running_var"):
                assert (results[m]["steps"][step][key] - r[key]).abs().max() <= tol, key
                assert torch.equal(
                    results[m]["steps"][step][key], results[members[0]]["steps"][step][key]
                )
            assert torch.equal(
                results[m]["steps"][step]["num_batches_tracked"], r["num_batches_tracked"]
            )
    for m in members:
        assert (results[m]["eval_y"] - ref_eval).abs().max() <= tol
        x = _global_batch(999, 4, cfg["dtype"])[0][m : m + 2]
        local = torch.nn.BatchNorm2d(C, track_running_stats=False).to(cfg["dtype"]).eval()(x)
        assert (results[m]["untracked_eval_y"] - local).abs().max() <= tol
        assert results[m]["untracked_eval_calls"] == {"all_gather": 0, "all_reduce": 0, "other": 0}


def test_three_ranks_uneven_batches_with_an_empty_rank():
    cfg = {"dtype": torch.float64, "momentum": 0.1, "steps": [[3, 0, 5], [1, 4, 2], [2, 2, 0]]}
    results = _run(3, cfg)
    _check(results, cfg, [0, 1, 2], 1e-12)
    for res in results:
        for fwd, bwd in res["calls"]:
            # forward: the 3-int agreement check, then the data; backward: one all_reduce
            assert fwd == {"all_gather": 2, "all_reduce": 0, "other": 0}
            assert bwd == {"all_gather": 0, "all_reduce": 1, "other": 0}
        assert res["eval_calls"] == {"all_gather": 0, "all_reduce": 0, "other": 0}


def test_process_group_and_momentum_none_float32():
    # ranks 0 and 1 synchronise in one group; rank 2 is alone (world size 1: plain BN)
    cfg = {
        "dtype": torch.float32,
        "momentum": None,
        "groups": [[0, 1], [2]],
        "steps": [[2, 3, 4], [5, 1, 3]],
    }
    results = _run(3, cfg)
    _check(results, cfg, [0, 1], 2e-5)
    _check(results, cfg, [2], 2e-5)
    for fwd, bwd in results[2]["calls"]:
        assert fwd["all_gather"] == 0 and bwd["all_reduce"] == 0


def test_without_process_group_is_batch_norm():
    assert not dist.is_initialized()
    sync = normkit.SyncBatchNorm(C)
    plain = torch.nn.BatchNorm2d(C)
    x = randn(4, C, 3, 3, seed=5, dtype=torch.float32)
    assert torch.allclose(sync(x), plain(x), atol=1e-6)
    assert torch.allclose(sync.running_var, plain.running_var, atol=1e-6)


def test_convert_sync_batchnorm_shares_parameters():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, C, 1),
        torch.nn.BatchNorm2d(C),
        torch.nn.Sequential(normkit.BatchNorm1d(C)),
    )
    net.eval()
    weight = net[1].weight
    out = normkit.SyncBatchNorm.convert_sync_batchnorm(net)
    assert type(out[1]) is normkit.SyncBatchNorm and type(out[2][0]) is normkit.SyncBatchNorm
    assert out[1].weight is weight and not out[1].training
    assert repr(out[1]) == repr(torch.nn.SyncBatchNorm(C))


def _ddp_model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, C, 3, padding=1),
        normkit.SyncBatchNorm(C),
        torch.nn.ReLU(),
        torch.nn.Conv2d(C, 2, 1),
    ).to(dtype)


def _ddp_worker(rank, world, init_file, out_dir, sizes):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(_ddp_model(torch.float64))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(2):
        x = randn(sum(sizes), 2, 4, 4, seed=200 + step)
        dy = randn(sum(sizes), 2, 4, 4, seed=300 + step)
        part = _slices(sizes)[rank]
        opt.zero_grad()
        (model(x[part]) * dy[part]).sum().backward()
        opt.step()
    torch.save(model.module.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def test_trains_under_distributed_data_parallel_like_one_process():
    # DDP averages gradients over ranks, so one process on the whole batch with the loss
    # divided by the world size must end at the same parameters and running stats
    sizes, world = [3, 5], 2
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(
            _ddp_worker,
            args=(world, os.path.join(tmp, "init"), tmp, sizes),
            nprocs=world,
            join=True,
        )
        states = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]
    single = _ddp_model(torch.float64)
    single[1] = torch.nn.BatchNorm2d(C).double()  # torch's own BN as the oracle
    opt = torch.optim.SGD(single.parameters(), lr=0.1)
    for step in range(2):
        x = randn(sum(sizes), 2, 4, 4, seed=200 + step)
        dy = randn(sum(sizes), 2, 4, 4, seed=300 + step)
        opt.zero_grad()
        ((single(x) * dy).sum() / world).backward()
        opt.step()
    for key, value in single.state_dict().items():
        for state in states:
            assert (state[key].double() - value.double()).abs().max() < 1e-10, key


# --- mismatched ranks: a clear error on every rank, no abort, no hang (issue 10, item 8) ---


def _mismatch_worker(rank, world, init_file, out_dir, cfg):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    channels, dtype = cfg["ranks"][rank]
    bn = normkit.SyncBatchNorm(channels).to(dtype)
    x = randn(4, channels, 3, seed=rank).to(dtype)
    outcome = {"error": None, "num_batches_tracked": None}
    run = bn
    if cfg.get("compile"):  # fullgraph=False: the sync step runs eagerly after a graph break
        run = torch.compile(bn, backend="aot_eager")
    try:
        run(x)
    except ValueError as e:
        outcome["error"] = str(e)
    outcome["num_batches_tracked"] = int(bn.num_batches_tracked)
    if cfg.get("compile"):
        torch._dynamo.reset()
    # the group is still usable afterwards: the ranks agree again and train
    same = normkit.SyncBatchNorm(2).double()
    outcome["after"] = same(randn(3, 2, 2, seed=7 + rank)).shape
    torch.save(outcome, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def _run_with_deadline(cfg, world=2, seconds=120):
    import time

    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.spawn(
            _mismatch_worker,
            args=(world, os.path.join(tmp, "init"), tmp, cfg),
            nprocs=world,
            join=False,
        )
        deadline = time.monotonic() + seconds
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                raise AssertionError(f"SyncBatchNorm ranks hung for {seconds} s on {cfg}")
        return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_mismatched_channels_raise_on_every_rank(compiled):
    results = _run_with_deadline(
        {"ranks": {0: (3, torch.float64), 1: (4, torch.float64)}, "compile": compiled}
    )
    for rank, res in enumerate(results):
        msg = res["error"]
        assert msg is not None, rank
        assert "rank 0: C=3" in msg and "rank 1: C=4" in msg, msg
        assert f"this is rank {rank}" in msg and "same num_features" in msg, msg
        if not compiled:  # eager: the failed call changed no state
            assert res["num_batches_tracked"] == 0
        assert res["after"] == torch.Size([3, 2, 2])


def test_mismatched_dtypes_raise_on_every_rank():
    results = _run_with_deadline({"ranks": {0: (3, torch.float32), 1: (3, torch.float64)}})
    for rank, res in enumerate(results):
        msg = res["error"]
        assert msg is not None, rank
        assert "dtype=torch.float32" in msg and "dtype=torch.float64" in msg, msg
        assert "cast inputs to one dtype" in msg, msg

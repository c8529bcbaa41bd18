"""Scaler.sync across torch.distributed ranks (gloo, localhost), checked against one fit."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from normkit import preprocessing as P

skp = pytest.importorskip("sklearn.preprocessing")

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _all_data():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(600, 4)) * [1, 1e3, 1e-2, 5] + [1e6, 0, -3, 7]
    X[rng.random(600) < 0.1, 2] = np.nan  # per-feature counts differ across ranks
    return X


def _shards(world: int, empty_rank):
    X = _all_data()
    cuts = {2: [250], 3: [100, 600]}[world]  # with 3 ranks, rank 2 gets no rows
    shards = np.split(X, cuts)
    return X, shards


def _worker(rank, world, port, out_dir, empty_rank):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _, shards = _shards(world, empty_rank)
        shard = shards[rank]
        results = {}
        for name in P.SCALERS:
            cls = getattr(P, name)
            s = cls()
            if name in ("ReciprocalScaler", "Log10Scaler"):
                part = np.abs(shard) + 1.0
            else:
                part = shard
            if len(part):
                # torch input on rank 0, numpy elsewhere: sync does not care
                s.partial_fit(torch.tensor(part) if rank == 0 else part)
            s.sync()
            for attr in (
                "n_samples_seen_",
                "data_min_",
                "data_max_",
                "scale_",
                "min_",
                "mean_",
                "var_",
            ):
                value = getattr(s, attr, None)
                if value is not None:
                    results[f"{name}.{attr}"] = np.asarray(value, dtype=np.float64)
        # a group that is a subset of the ranks
        sub = dist.new_group([0, 1])
        if rank in (0, 1):
            s = P.MinMaxScaler().fit(shards[rank]).sync(process_group=sub)
            results["sub.data_max_"] = s.data_max_
        # ranks with different feature counts must fail on every rank, loudly
        bad = P.StandardScaler().fit(np.ones((2, 3 if rank == 0 else 4)))
        try:
            bad.sync()
        except ValueError as exc:
            results["mismatch_error"] = (
                np.array([1.0]) if "different numbers of features" in str(exc) else np.array([0.0])
            )
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **results)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_sync_equals_one_fit_on_all_data(world, tmp_path):
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path), None), nprocs=world, join=True)
    X, shards = _shards(world, None)
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(world)]
    # every rank holds bit-identical statistics
    for r in range(1, world):
        assert ranks[r].keys() - {"sub.data_max_"} == ranks[0].keys() - {"sub.data_max_"}
        for k in ranks[0]:
            if k in ranks[r]:
                np.testing.assert_array_equal(ranks[r][k], ranks[0][k], err_msg=k)
    res = ranks[0]
    # sklearn over the same shards in rank order (the merge order sync uses)
    std = skp.StandardScaler()
    mm = skp.MinMaxScaler()
    for shard in shards:
        if len(shard):
            std.partial_fit(shard)
            mm.partial_fit(shard)
    np.testing.assert_allclose(res["StandardScaler.mean_"], std.mean_, rtol=1e-12)
    np.testing.assert_allclose(res["StandardScaler.var_"], std.var_, rtol=1e-12)
    np.testing.assert_array_equal(res["StandardScaler.n_samples_seen_"], std.n_samples_seen_)
    np.testing.assert_allclose(res["MinMaxScaler.scale_"], mm.scale_, rtol=1e-12)
    np.testing.assert_array_equal(res["MinMaxScaler.data_min_"], np.nanmin(X, 0))
    np.testing.assert_array_equal(res["MinMaxScaler.n_samples_seen_"], len(X))
    np.testing.assert_array_equal(res["Log10Scaler.data_max_"], np.nanmax(np.abs(X) + 1, 0))
    np.testing.assert_array_equal(res["ArctanScaler.n_samples_seen_"], len(X))
    # and a single process fitting everything agrees to the data's own rounding
    whole = P.StandardScaler().fit(X)
    np.testing.assert_allclose(res["StandardScaler.mean_"], whole.mean_, rtol=1e-12)
    np.testing.assert_allclose(res["StandardScaler.var_"], whole.var_, rtol=1e-9)
    np.testing.assert_array_equal(res["sub.data_max_"], np.nanmax(np.vstack(shards[:2]), 0))
    for r in range(world):
        assert ranks[r]["mismatch_error"][0] == 1.0

"""The cpu backend where users call it: after fork (DataLoader workers) and from threads.

docs/design.md sections 3-4: numba's OpenMP layer kills forked children, its workqueue
layer aborts on concurrent threads, and a thread pool created before a fork hangs
in the child. Each scenario runs in a fresh interpreter with a timeout, so a hang
or an abort fails the test instead of freezing the suite.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba")

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

PRELUDE = textwrap.dedent("""
    import threading
    import torch
    import torch.nn.functional as F
    from normkit import dispatch
    from normkit.functional import local_response_norm
    from normkit.ops import cpu

    torch.set_num_threads(2)

    def lrn_err(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(4, 16, 9, 9, generator=g, dtype=torch.float64)
        ours = local_response_norm(x, 5, 1e-2, 0.75, 1.0, backend="cpu")
        assert dispatch.last_backend["lrn_fwd"] == "cpu"
        theirs = F.local_response_norm(x, 5, 1e-2, 0.75, 1.0)
        y, _, _ = cpu.norms.layer_norm_fwd(x.reshape(-1, 81), None, None, 1e-5)
        ln = F.layer_norm(x.reshape(-1, 81), (81,), eps=1e-5)
        return max((ours - theirs).abs().max().item(), (y - ln).abs().max().item())
""")


def _run(body: str, timeout: float = 240.0, threads: str = "2") -> str:
    env = dict(
        os.environ,
        PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        NORMKIT_NUM_THREADS=threads,
    )
    env.pop("NORMKIT_BACKEND", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hung for {timeout} s; output so far: {exc.stdout!r} {exc.stderr!r}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_parent_then_fork_dataloader_workers_then_threads():
    out = _run("""
        assert lrn_err(0) < 1e-12          # the pool now exists in the parent

        class Data(torch.utils.data.Dataset):
            def __len__(self):
                return 8

            def __getitem__(self, i):      # runs in forked workers
                return torch.tensor(lrn_err(100 + i))

        loader = torch.utils.data.DataLoader(Data(), batch_size=2, num_workers=2,
                                             multiprocessing_context="fork", timeout=120)
        errs = torch.cat([b for b in loader])
        assert errs.shape == (8,) and errs.max().item() < 1e-12, errs

        results = {}
        def work(i):
            results[i] = max(lrn_err(200 + 10 * i + j) for j in range(15))
        ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        assert not any(t.is_alive() for t in ts), "a thread hung"
        assert len(results) == 4 and max(results.values()) < 1e-12, results
        assert lrn_err(1) < 1e-12          # and the parent still works afterwards
        print("OK")
    """)
    assert out.strip().endswith("OK")


def test_multiprocessing_fork_pool_after_threads():
    out = _run("""
        import multiprocessing as mp
        ts = [threading.Thread(target=lrn_err, args=(i,)) for i in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        with mp.get_context("fork").Pool(2) as pool:
            errs = pool.map_async(lrn_err, range(6)).get(timeout=120)
        assert max(errs) < 1e-12, errs
        print("OK")
    """)
    assert out.strip().endswith("OK")


def test_kernel_errors_reach_the_caller_and_the_pool_survives():
    out = _run("""
        import numpy as np
        from normkit.ops.cpu import _pool

        def boom(a, start, stop):
            if start > 0:
                raise RuntimeError("chunk failed")
        try:
            _pool.parallel_for(boom, 10, (None,))
        except RuntimeError as exc:
            assert "chunk failed" in str(exc)
        else:
            raise AssertionError("error swallowed")
        assert lrn_err(3) < 1e-12
        print("OK")
    """)
    assert out.strip().endswith("OK")


def test_openmp_team_in_the_parent_own_threads_in_a_forked_child():
    # GNU OpenMP is not safe in a child forked after the parent used it (torch's own
    # multi-threaded ops hang there, which is why DataLoader workers run 1 torch thread):
    # the child must switch to normkit's own threads, which NORMKIT_NUM_THREADS=2 (set by
    # _run) still splits the work over, and the parent keep the team
    out = _run("""
        import multiprocessing as mp
        from normkit.ops.cpu import _pool

        def big_err(seed, child=True):
            if child:
                torch.set_num_threads(1)  # torch's own ops would hang (see above)
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(96, 2048, generator=g, dtype=torch.float64) + 1e4  # > SERIAL_BELOW
            y, _, _ = cpu.norms.layer_norm_fwd(x, None, None, 1e-5)
            ref = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True)
                                                    + 1e-5).sqrt()
            return (y - ref).abs().max().item(), _pool.runner()

        err, parent = big_err(0, child=False)
        assert err < 1e-9 and parent in ("openmp", "threads"), (err, parent)
        with mp.get_context("fork").Pool(2) as pool:
            results = pool.map_async(big_err, range(4)).get(timeout=120)
        assert all(e < 1e-9 for e, _ in results), results
        assert {r for _, r in results} == {"threads"}, results
        assert big_err(1, child=False)[1] == parent  # the parent is unchanged
        print("OK", parent)
    """)
    assert out.strip().startswith("OK")

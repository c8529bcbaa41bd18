"""normkit's layers are torch's layers for every isinstance check (issue 10, item 3)."""

import pytest
import torch
from torch import nn

import normkit

from hostile import randn

PAIRS = [
    (
        lambda m: m.BatchNorm1d(3),
        (nn.BatchNorm1d, nn.modules.batchnorm._BatchNorm, nn.modules.batchnorm._NormBase),
    ),
    (
        lambda m: m.BatchNorm2d(3),
        (nn.BatchNorm2d, nn.modules.batchnorm._BatchNorm, nn.modules.batchnorm._NormBase),
    ),
    (lambda m: m.BatchNorm3d(3), (nn.BatchNorm3d, nn.modules.batchnorm._BatchNorm)),
    (lambda m: m.SyncBatchNorm(3), (nn.modules.batchnorm._BatchNorm,)),
    (
        lambda m: m.InstanceNorm1d(3),
        (nn.InstanceNorm1d, nn.modules.instancenorm._InstanceNorm, nn.modules.batchnorm._NormBase),
    ),
    (lambda m: m.InstanceNorm2d(3), (nn.InstanceNorm2d,)),
    (lambda m: m.InstanceNorm3d(3), (nn.InstanceNorm3d,)),
    (lambda m: m.LayerNorm(4), (nn.LayerNorm,)),
    (lambda m: m.GroupNorm(1, 4), (nn.GroupNorm,)),
    (lambda m: m.RMSNorm(4), (nn.RMSNorm,)),
]


@pytest.mark.parametrize("make,bases", PAIRS)
def test_normkit_layers_are_instances_of_their_torch_classes(make, bases):
    ours, theirs = make(normkit), make(nn)
    for base in bases:
        assert isinstance(ours, base), base
    # ... and nothing else torch-wise: BatchNorm2d is not a BatchNorm1d
    others = [
        c
        for c in (
            nn.BatchNorm1d,
            nn.BatchNorm2d,
            nn.BatchNorm3d,
            nn.LayerNorm,
            nn.GroupNorm,
            nn.RMSNorm,
            nn.InstanceNorm2d,
        )
        if not isinstance(theirs, c)
    ]
    assert not any(isinstance(ours, c) for c in others)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_weight_decay_grouping_by_type_sees_normkit_layers():
    """The Trainer/timm idiom: no weight decay on norm layers, found by isinstance."""
    model = nn.Sequential(
        nn.Linear(4, 4), normkit.LayerNorm(4), nn.Linear(4, 4), normkit.BatchNorm1d(4)
    )
    norm_types = (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)
    no_decay = {
        id(p)
        for m in model.modules()
        if isinstance(m, norm_types)
        for p in m.parameters(recurse=False)
    }
    # hand count: LayerNorm and BatchNorm1d have weight + bias each
    assert len(no_decay) == 4
    # freezing code that flips every _BatchNorm to eval finds normkit's
    frozen = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert frozen == [model[3]]


def test_torch_convert_sync_batchnorm_takes_normkit_batchnorm():
    """torch's own helper recognises normkit's BatchNorm through isinstance."""
    model = nn.Sequential(normkit.BatchNorm2d(3))
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert type(synced[0]) is nn.SyncBatchNorm
    back = normkit.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))
    assert type(back[0]) is normkit.SyncBatchNorm


def test_sync_batch_norm_is_a_batchnorm_but_not_torchs_sync_batch_norm():
    """DistributedDataParallel refuses any nn.SyncBatchNorm in a CPU model; normkit's
    SyncBatchNorm exists for CPU/gloo, so it only shares the _BatchNorm base."""
    sync = normkit.SyncBatchNorm(3)
    assert isinstance(sync, nn.modules.batchnorm._BatchNorm)
    assert not isinstance(sync, nn.SyncBatchNorm)
    assert repr(sync) == repr(nn.SyncBatchNorm(3))
    assert list(sync.state_dict()) == list(nn.SyncBatchNorm(3).state_dict())


def test_forward_is_normkits_not_torchs():
    bn = normkit.BatchNorm2d(3)
    bn.backend = "torch"
    normkit.dispatch.last_backend.pop("batch_norm_apply", None)
    bn(randn(2, 3, 2, 2, dtype=torch.float32))
    assert normkit.dispatch.last_backend["batch_norm_apply"] == "torch"


def test_local_response_norm_is_deliberately_not_torchs():
    """Its size/alpha/k follow ``convention``; a torch-typed reader would misread them."""
    tf = normkit.LocalResponseNorm.from_tensorflow(
        depth_radius=2, bias=1.0, alpha=1.0, beta=0.5, channel_dim=1
    )
    assert not isinstance(tf, nn.LocalResponseNorm)
    x = randn(2, 6, 3, 3, seed=3)
    # what code trusting isinstance would compute from the attributes
    misread = nn.functional.local_response_norm(x, tf.size, tf.alpha, tf.beta, tf.k)
    assert (misread - tf(x)).abs().max() > 1e-3

"""Small models in the shape of the ones users convert, and look-alikes of third-party
normalization classes.

The look-alikes are written here from each package's documented behaviour (timm,
torchvision and transformers are not importable next to this CPU torch). Each sets
``__module__`` to the real class's module, because that (with the class name and
attributes) is how :func:`normkit.convert` recognises the real ones.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# --- timm look-alikes (timm.layers.norm / timm.layers.norm_act) -----------------------


class TimmLayerNorm(nn.LayerNorm):
    """timm ``LayerNorm``: nn.LayerNorm with eps 1e-6 and a fast_norm switch (off)."""

    __module__ = "timm.layers.norm"

    def __init__(self, num_channels, eps=1e-6, affine=True):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)
        self._fast_norm = False

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


TimmLayerNorm.__name__ = TimmLayerNorm.__qualname__ = "LayerNorm"


class TimmLayerNorm2d(nn.LayerNorm):
    """timm ``LayerNorm2d``: LayerNorm over C of an NCHW map (permute, norm, permute)."""

    __module__ = "timm.layers.norm"

    def __init__(self, num_channels, eps=1e-6, affine=True):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)
        self._fast_norm = False

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


TimmLayerNorm2d.__name__ = TimmLayerNorm2d.__qualname__ = "LayerNorm2d"


class TimmGroupNorm1(nn.GroupNorm):
    """timm ``GroupNorm1``: one group (LayerNorm over C, H, W with per-channel affine)."""

    __module__ = "timm.layers.norm"

    def __init__(self, num_channels, **kwargs):
        super().__init__(1, num_channels, **kwargs)
        self._fast_norm = False

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


TimmGroupNorm1.__name__ = TimmGroupNorm1.__qualname__ = "GroupNorm1"


class TimmBatchNormAct2d(nn.BatchNorm2d):
    """timm ``BatchNormAct2d``: BatchNorm2d (torch's running-stat rules), then ``drop``
    and ``act`` submodules (activation in place by default)."""

    __module__ = "timm.layers.norm_act"

    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=True,
        track_running_stats=True,
        apply_act=True,
        act_layer=nn.ReLU,
        inplace=True,
        drop_layer=None,
    ):
        super().__init__(
            num_features,
            eps=eps,
            momentum=momentum,
            affine=affine,
            track_running_stats=track_running_stats,
        )
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        self.act = act_layer(inplace=inplace) if apply_act else nn.Identity()

    def forward(self, x):
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        x = F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            use_batch,
            factor,
            self.eps,
        )
        return self.act(self.drop(x))


TimmBatchNormAct2d.__name__ = TimmBatchNormAct2d.__qualname__ = "BatchNormAct2d"


# --- torchvision look-alikes ------------------------------------------------------------


class TVLayerNorm2d(nn.LayerNorm):
    """torchvision ``models.convnext.LayerNorm2d``."""

    __module__ = "torchvision.models.convnext"

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


TVLayerNorm2d.__name__ = TVLayerNorm2d.__qualname__ = "LayerNorm2d"


class TVFrozenBatchNorm2d(nn.Module):
    """torchvision ``ops.FrozenBatchNorm2d``: fixed statistics and affine as buffers;
    ``x * scale + shift`` with ``scale = w * rsqrt(rv + eps)``."""

    __module__ = "torchvision.ops.misc"

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        shift = b - rm * scale
        return x * scale + shift


TVFrozenBatchNorm2d.__name__ = TVFrozenBatchNorm2d.__qualname__ = "FrozenBatchNorm2d"


# --- Hugging Face transformers look-alikes ----------------------------------------------


class LlamaRMSNorm(nn.Module):
    """``LlamaRMSNorm``: float32 math, cast back to the input dtype, times weight."""

    __module__ = "transformers.models.llama.modeling_llama"

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class GemmaRMSNorm(nn.Module):
    """``GemmaRMSNorm``: float32 math, times ``1 + weight`` (weight starts at 0), cast last."""

    __module__ = "transformers.models.gemma.modeling_gemma"

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        output = self._norm(x.float())
        output = output * (1.0 + self.weight.float())
        return output.type_as(x)


class T5LayerNorm(nn.Module):
    """``T5LayerNorm``: RMS without mean subtraction or bias; variance in float32; cast to
    the weight's dtype only when that is half precision."""

    __module__ = "transformers.models.t5.modeling_t5"

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in [torch.float16, torch.bfloat16]:
            hidden_states = hidden_states.to(self.weight.dtype)
        return self.weight * hidden_states


class UnknownNorm(nn.Module):
    """A normalization normkit does not know (scaled by the max): must be left alone."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))

    def forward(self, x):
        return self.weight * x / (x.abs().amax(-1, keepdim=True) + 1.0)


# --- torchvision-style CNN blocks -------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision ResNet ``BasicBlock``: in-place ReLU and ``out += identity``."""

    def __init__(self, cin, cout, stride=1, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """torchvision ResNet ``Bottleneck`` (expansion 4)."""

    def __init__(self, cin, width, norm=nn.BatchNorm2d):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = norm(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), norm(cout))

    def forward(self, x):
        identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class InvertedResidual(nn.Module):
    """MobileNetV3-style block: expand (BN + in-place Hardswish), depthwise (BN + in-place
    ReLU), project (BN), ``result += input``."""

    def __init__(self, c, expand):
        super().__init__()
        hidden = c * expand
        self.expand = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish(inplace=True)
        )
        self.dw = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        result = self.project(self.dw(self.expand(x)))
        result += x
        return result


class ResNetTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        )
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 12, stride=2)
        self.layer3 = Bottleneck(12, 4)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class MobileNetTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish(inplace=True)
        )
        self.blocks = nn.Sequential(InvertedResidual(8, 2), InvertedResidual(8, 3))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


# --- transformer encoders ---------------------------------------------------------------


class EncoderLayer(nn.Module):
    """ViT/BERT-style pre-norm layer: x + attn(norm(x)), x + mlp(norm(x))."""

    def __init__(self, d, heads, norm=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm2 = norm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViTTiny(nn.Module):
    def __init__(self, norm=nn.LayerNorm, d=16):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.blocks = nn.Sequential(EncoderLayer(d, 2, norm), EncoderLayer(d, 2, norm))
        self.norm = norm(d)
        self.head = nn.Linear(d, 5)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(tokens)).mean(1))


class ConvNeXtTimmTiny(nn.Module):
    """timm-style: BatchNormAct2d stem, ConvNeXt blocks with LayerNorm2d, GroupNorm1."""

    def __init__(self, ln2d=TimmLayerNorm2d):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), TimmBatchNormAct2d(8))
        self.dw = nn.Conv2d(8, 8, 7, 1, 3, groups=8)
        self.norm = ln2d(8)
        self.pw = nn.Sequential(nn.Conv2d(8, 16, 1), nn.GELU(), nn.Conv2d(16, 8, 1))
        self.gn = TimmGroupNorm1(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.pw(self.norm(self.dw(x)))
        return self.head(self.gn(x).mean((2, 3)))


class TorchvisionDetectorTiny(nn.Module):
    """torchvision-style: FrozenBatchNorm2d backbone (detection) and a LayerNorm2d head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn = TVFrozenBatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.norm = TVLayerNorm2d(8, eps=1e-6)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        return self.head(self.norm(x).mean((2, 3)))


class DecoderLayerHF(nn.Module):
    """Hugging Face-style pre-norm decoder layer with a given RMSNorm class."""

    def __init__(self, d, norm):
        super().__init__()
        self.input_layernorm = norm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.post_attention_layernorm = norm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d))

    def forward(self, x):
        h = self.input_layernorm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.post_attention_layernorm(x))


class HFTiny(nn.Module):
    def __init__(self, norm=LlamaRMSNorm, d=16):
        super().__init__()
        self.embed = nn.Linear(6, d)
        self.layers = nn.ModuleList([DecoderLayerHF(d, norm), DecoderLayerHF(d, norm)])
        self.norm = norm(d)
        self.lm_head = nn.Linear(d, 5)

    def forward(self, x):
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(self.norm(h))


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial norm parameters and running stats (ones/zeros hide affine bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("weight", "bias")) and p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for name, b in model.named_buffers():
            if name.endswith("running_mean") or (name.endswith("bias") and b.dim() == 1):
                b.copy_(0.2 * torch.randn(b.shape, generator=g, dtype=b.dtype))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
            elif name.endswith("weight") and b.dim() == 1:
                b.copy_(1.0 + 0.3 * torch.randn(b.shape, generator=g, dtype=b.dtype))
    return model


# name -> (builder, input shape)
ZOO = {
    "resnet": (ResNetTiny, (4, 3, 8, 8)),
    "mobilenetv3": (MobileNetTiny, (4, 3, 8, 8)),
    "vit": (ViTTiny, (3, 3, 8, 8)),
    "vit-timm-layernorm": (lambda: ViTTiny(norm=TimmLayerNorm), (3, 3, 8, 8)),
    "convnext-timm": (ConvNeXtTimmTiny, (3, 3, 8, 8)),
    "convnext-torchvision": (lambda: ConvNeXtTimmTiny(ln2d=TVLayerNorm2d), (3, 3, 8, 8)),
    "detector-torchvision": (TorchvisionDetectorTiny, (3, 3, 8, 8)),
    "llama": (lambda: HFTiny(LlamaRMSNorm), (3, 4, 6)),
    "gemma": (lambda: HFTiny(GemmaRMSNorm), (3, 4, 6)),
    "t5": (lambda: HFTiny(T5LayerNorm), (3, 4, 6)),
}

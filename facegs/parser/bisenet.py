"""BiSeNet face parser (the face-parsing.PyTorch architecture) in plain PyTorch, built without downloads.

At ``width=1.0`` the ``state_dict`` has exactly the 160 keys and shapes of the published CelebAMask-HQ
checkpoint (``79999_iter.pth``; facexlib's ``parsing_bisenet.pth`` has the same keys): 13,300,416
trainable parameters. There is no ``num_batches_tracked`` counter (see :class:`BatchNorm2d`).

Architecture (``x``: ``[B, 3, H, W]`` normalised RGB, see :mod:`facegs.parser.normalize`)::

    cp.resnet (ResNet-18 minus fc)   -> feat8 [B, C2, H/8, W/8], feat16 [B, C3, H/16], feat32 [B, C4, H/32]
    cp: global average of feat32 -> conv_avg (1x1) ; arm32(feat32) + avg -> nearest up to 1/16
        -> conv_head32 = feat_cp16 [B, Ch, H/16] ; arm16(feat16) + feat_cp16 -> nearest up to 1/8
        -> conv_head16 = feat_cp8 [B, Ch, H/8]
    ffm(concat(feat8, feat_cp8))     -> [B, Cf, H/8, W/8]
    heads: conv_out(ffm), conv_out16(feat_cp8), conv_out32(feat_cp16), each 3x3 conv-BN-ReLU then a
           bias-free 1x1 conv, bilinearly upsampled (align_corners=True) to [B, n_classes, H, W]

(The reference code names the heads by the features' nominal strides 16/32 although they are applied
after the upsampling; facegs keeps its wiring and names so that the checkpoint means the same thing.)
``(C1, C2, C3, C4, Ch, Cf) = (64, 128, 256, 512, 128, 256)`` scaled by ``width``.

The published checkpoint expects 512x512 RGB with ImageNet normalisation. The network itself runs on
any input size (sizes divisible by 32 keep every stage's grid aligned).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PUBLISHED_INPUT_SIZE: tuple[int, int] = (512, 512)
"""(H, W) the published BiSeNet checkpoint was trained and is meant to be run at."""


def scaled_channels(channels: int, width: float) -> int:
    """Channel count of a ``width``-scaled model: ``max(1, round(channels * width))``."""
    return max(1, int(round(channels * width)))


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` without the ``num_batches_tracked`` buffer.

    The published checkpoint has no such entries, so a model that must have EXACTLY its keys
    cannot carry them. With the default ``momentum=0.1`` the counter is never read. Checkpoints
    that do carry ``num_batches_tracked`` (older torch) still load with ``strict=True``: the entry
    is dropped on load.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.num_batches_tracked = None  # type: ignore[assignment]  # unregisters it from state_dict

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1 (there is no counter to reset)."""
        if self.running_mean is not None and self.running_var is not None:
            self.running_mean.zero_()
            self.running_var.fill_(1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[no-untyped-def]
        state_dict.pop(prefix + "num_batches_tracked", None)
        # version 2 stops _BatchNorm from re-inserting a num_batches_tracked entry for old files
        local_metadata = dict(local_metadata, version=2)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


class ConvBNReLU(nn.Module):
    """Bias-free ``ks x ks`` conv, BatchNorm, ReLU: ``[B, cin, H, W] -> [B, cout, H, W]`` (stride 1)."""

    def __init__(self, cin: int, cout: int, ks: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=ks, stride=1, padding=ks // 2, bias=False)
        self.bn = BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block (torchvision key names): ``[B, cin, H, W] -> [B, cout, H/stride, W/stride]``."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18(nn.Module):
    """ResNet-18 trunk without ``fc`` (keys as torchvision's). Returns the 1/8, 1/16, 1/32 features.

    ``x [B, 3, H, W] -> (feat8 [B, 2c, H/8, W/8], feat16 [B, 4c, H/16, W/16], feat32 [B, 8c, H/32, W/32])``
    with ``c = 64 * width`` (sizes rounded up at odd inputs). Randomly initialised: nothing is downloaded.
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3, c4 = (scaled_channels(c, width) for c in (64, 128, 256, 512))
        self.channels = (c1, c2, c3, c4)
        self.conv1 = nn.Conv2d(3, c1, 7, stride=2, padding=3, bias=False)
        self.bn1 = BatchNorm2d(c1)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(c1, c1), BasicBlock(c1, c1))
        self.layer2 = nn.Sequential(BasicBlock(c1, c2, 2), BasicBlock(c2, c2))
        self.layer3 = nn.Sequential(BasicBlock(c2, c3, 2), BasicBlock(c3, c3))
        self.layer4 = nn.Sequential(BasicBlock(c3, c4, 2), BasicBlock(c4, c4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


def _global_avg(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C, 1, 1]`` spatial mean."""
    return x.mean(dim=(2, 3), keepdim=True)


def _resize_nearest(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour resize of ``x [B, C, h, w]`` to ``like``'s spatial size."""
    return F.interpolate(x, size=[int(like.shape[2]), int(like.shape[3])], mode="nearest")


class AttentionRefinementModule(nn.Module):
    """ARM: ``conv`` (3x3 conv-BN-ReLU) then channel attention ``sigmoid(bn_atten(conv_atten(avg)))``.

    ``[B, cin, H, W] -> [B, cout, H, W]``.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, ks=3)
        self.conv_atten = nn.Conv2d(cout, cout, kernel_size=1, bias=False)
        self.bn_atten = BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(_global_avg(feat))))
        return feat * atten


class ContextPath(nn.Module):
    """ResNet-18 + ARMs + global context. ``x [B, 3, H, W] -> (feat8, feat_cp8, feat_cp16)``.

    ``feat8 [B, C2, H/8, W/8]`` (layer2, standing in for the spatial path), ``feat_cp8 [B, Ch, H/8, W/8]``,
    ``feat_cp16 [B, Ch, H/16, W/16]``.
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        self.resnet = ResNet18(width)
        _, _, c3, c4 = self.resnet.channels
        ch = scaled_channels(128, width)
        self.out_channels = ch
        self.arm16 = AttentionRefinementModule(c3, ch)
        self.arm32 = AttentionRefinementModule(c4, ch)
        self.conv_head32 = ConvBNReLU(ch, ch, ks=3)
        self.conv_head16 = ConvBNReLU(ch, ch, ks=3)
        self.conv_avg = ConvBNReLU(c4, ch, ks=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(_global_avg(feat32))  # [B, Ch, 1, 1], broadcast == nearest upsampling
        feat32_sum = self.arm32(feat32) + avg
        feat_cp16 = self.conv_head32(_resize_nearest(feat32_sum, feat16))
        feat16_sum = self.arm16(feat16) + feat_cp16
        feat_cp8 = self.conv_head16(_resize_nearest(feat16_sum, feat8))
        return feat8, feat_cp8, feat_cp16


class FeatureFusionModule(nn.Module):
    """FFM: ``convblk`` (1x1 conv-BN-ReLU) over the concatenation, plus squeeze-excitation residual.

    ``(fsp [B, a, H, W], fcp [B, b, H, W]) -> [B, cout, H, W]`` with ``a + b == cin``;
    ``out = feat * (1 + sigmoid(conv2(relu(conv1(avg(feat))))))``, ``feat = convblk(cat)``.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, ks=1)
        mid = max(1, cout // 4)
        self.conv1 = nn.Conv2d(cout, mid, kernel_size=1, bias=False)
        self.conv2 = nn.Conv2d(mid, cout, kernel_size=1, bias=False)

    def forward(self, fsp: torch.Tensor, fcp: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_avg(feat)))))
        return feat * atten + feat


class BiSeNetOutput(nn.Module):
    """Output head: 3x3 conv-BN-ReLU ``conv`` then bias-free 1x1 ``conv_out``.

    ``[B, cin, h, w] -> [B, n_classes, h, w]`` logits (not upsampled).
    """

    def __init__(self, cin: int, mid: int, n_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, mid, ks=3)
        self.conv_out = nn.Conv2d(mid, n_classes, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


def _upsample_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear (``align_corners=True``, as the reference) resize of ``[B, K, h', w']`` to ``[B, K, h, w]``."""
    return F.interpolate(x, size=[h, w], mode="bilinear", align_corners=True)


class BiSeNet(nn.Module):
    """BiSeNet face parser. ``forward(x [B, 3, H, W]) -> (main, aux16, aux32)``, each ``[B, n_classes, H, W]``.

    ``x`` is RGB normalised with ImageNet statistics (:func:`facegs.parser.normalize.normalize_rgb`);
    the published checkpoint expects 512x512 input (:data:`PUBLISHED_INPUT_SIZE`). All three heads are
    upsampled bilinearly (``align_corners=True``) to the input size; inference uses the argmax of the
    main head (:meth:`forward_main`, which skips the two auxiliary heads). Any input size works.

    ``width`` scales every channel count (``round(c * width)``, at least 1): ``width=0.25`` gives
    16/32/64/128 ResNet channels, 32-channel context features, a 64-channel fusion module and
    16-channel auxiliary heads, a small model for CPU tests and demos. Only ``width=1.0`` (the default)
    matches the published checkpoint. Weights are randomly initialised (no ImageNet download): load a
    checkpoint with :mod:`facegs.parser.checkpoint`.
    """

    def __init__(self, n_classes: int = 19, width: float = 1.0) -> None:
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.n_classes = int(n_classes)
        self.width = float(width)
        self.cp = ContextPath(width)
        c8 = self.cp.resnet.channels[1]
        ch = self.cp.out_channels
        cf = scaled_channels(256, width)
        self.ffm = FeatureFusionModule(c8 + ch, cf)
        self.conv_out = BiSeNetOutput(cf, cf, n_classes)
        self.conv_out16 = BiSeNetOutput(ch, scaled_channels(64, width), n_classes)
        self.conv_out32 = BiSeNetOutput(ch, scaled_channels(64, width), n_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reference initialisation: Kaiming-normal (a=1) convolutions, BatchNorm weight 1 / bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=1)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, w = int(x.shape[2]), int(x.shape[3])
        feat8, feat_cp8, feat_cp16 = self.cp(x)
        out = self.conv_out(self.ffm(feat8, feat_cp8))
        out16 = self.conv_out16(feat_cp8)
        out32 = self.conv_out32(feat_cp16)
        return _upsample_to(out, h, w), _upsample_to(out16, h, w), _upsample_to(out32, h, w)

    @torch.jit.export
    def forward_main(self, x: torch.Tensor) -> torch.Tensor:
        """Main-head logits only: ``[B, 3, H, W] -> [B, n_classes, H, W]`` (what inference uses)."""
        h, w = int(x.shape[2]), int(x.shape[3])
        feat8, feat_cp8, _ = self.cp(x)
        return _upsample_to(self.conv_out(self.ffm(feat8, feat_cp8)), h, w)


class MainHead(nn.Module):
    """Wraps a :class:`BiSeNet` so that ``forward`` returns only ``model.forward_main(x)``.

    ``[B, 3, H, W] -> [B, n_classes, H, W]``. Used for TorchScript export.
    """

    def __init__(self, model: BiSeNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_main(x)


def count_trainable_parameters(model: nn.Module) -> int:
    """Number of elements in parameters with ``requires_grad`` (13,300,416 for ``BiSeNet(19)``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def expected_state_shapes(n_classes: int = 19, width: float = 1.0) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of ``BiSeNet(n_classes, width).state_dict()``, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = BiSeNet(n_classes, width)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}

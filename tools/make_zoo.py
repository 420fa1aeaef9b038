"""Write the baseline zoo (search_spaces/baselines/*.json) from NetAug's base model definitions.

The channel arithmetic follows mit-han-lab/tinyml netaug/models/base/{mbv2,mbv3,proxylessnas,
mcunet,tiny_mbv2}.py: stage widths scaled by the width multiplier and rounded with
``make_divisible(., 8)``; the last 1x1 conv at least 1280 wide; mid channels
``make_divisible(round(e * c_in), 8)`` inside stages and ``round(6 * c_in)`` in the head block.

Run ``python tools/make_zoo.py`` to regenerate; tests/test_zoo.py checks the files match.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.arch import Arch, make_divisible  # noqa: E402


def _block(c_in, c_out, k, stride, mid, act, se=0):
    e = round(mid / c_in, 4)  # nominal: the explicit mid_channels is what the builder uses
    return {
        "kernel_size": k,
        "expand_ratio": e,
        "mid_channels": mid,
        "out_channels": c_out,
        "stride": stride,
        "act": act,
        "se_channels": se,
    }


def _ds_block(c_in, c_out, act):
    """NetAug's DsConvLayer: depthwise 3x3 + 1x1 project, i.e. an MBConv with expand ratio 1."""
    return {"kernel_size": 3, "expand_ratio": 1, "mid_channels": c_in, "out_channels": c_out, "stride": 1, "act": act, "se_channels": 0}


def _arch(name, resolution, stem_c, stem_act, stages, feature_mix=None, post_pool=None):
    return Arch.from_dict(
        {
            "name": name,
            "resolution": resolution,
            "num_classes": 1000,
            "stem": {"out_channels": stem_c, "kernel_size": 3, "stride": 2, "act": stem_act},
            "stages": [{"blocks": b} for b in stages],
            "feature_mix": feature_mix,
            "post_pool": post_pool,
        }
    )


def mbv2(width_mult: float, name: str, resolution: int, tiny: bool = False) -> Arch:
    sw = [make_divisible(w * width_mult, 8) for w in [32, 16, 24, 32, 64, 96, 160]]
    head = [make_divisible(w * width_mult, 8) for w in [320, 1280]]
    head[1] = max(head[1], 1280)
    if tiny:  # TinyMobileNetV2: MobileNetV2-w0.35 with a 56->112 head block and a 448 feature mix
        head = [112, 448]
    stages = [[_ds_block(sw[0], sw[1], "relu6")]]
    c = sw[1]
    for (t, n, s), cout in zip([(6, 2, 2), (6, 3, 2), (6, 4, 2), (6, 3, 1), (6, 3, 2)], sw[2:]):
        blocks = []
        for i in range(n):
            blocks.append(_block(c, cout, 3, s if i == 0 else 1, make_divisible(round(t * c), 8), "relu6"))
            c = cout
        stages.append(blocks)
    stages.append([_block(c, head[0], 3, 1, round(c * 6), "relu6")])
    return _arch(name, resolution, sw[0], "relu6", stages, {"out_channels": head[1], "act": "relu6"})


def mbv3(width_mult: float, name: str, resolution: int) -> Arch:
    sw = [make_divisible(w * width_mult, 8) for w in [16, 24, 40, 80, 112, 160]]
    head = [make_divisible(w * width_mult, 8) for w in [960, 1280]]
    head[1] = max(head[1], 1280)
    cfgs = [
        ([64, 72], 3, 2, 2, "relu", False),
        ([72, 120, 120], 5, 3, 2, "relu", True),
        ([240, 200, 184, 184], 3, 4, 2, "hswish", False),
        ([480, 672], 3, 2, 1, "hswish", True),
        ([672, 960, 960], 5, 3, 2, "hswish", True),
    ]
    stages = [[_ds_block(sw[0], sw[0], "relu")]]
    c = sw[0]
    for (mids, k, n, s, act, use_se), cout in zip(cfgs, sw[1:]):
        blocks = []
        for i in range(n):
            mid = make_divisible(round(mids[i] * width_mult), 8)
            se = max(make_divisible(mid / 4, 8), 16) if use_se else 0
            blocks.append(_block(c, cout, k, s if i == 0 else 1, mid, act, se))
            c = cout
        stages.append(blocks)
    return _arch(
        name,
        resolution,
        sw[0],
        "hswish",
        stages,
        {"out_channels": head[0], "act": "hswish"},
        {"out_channels": head[1], "act": "hswish"},
    )


def _searched_stages(sw: list[int], cfgs: list) -> tuple[list, int]:
    """Stages of a searched (TinyNAS / ProxylessNAS-style) network: the first depthwise-separable
    block, then per stage (expand ratios, kernels, blocks, stride) with output widths ``sw[2:]``.
    Returns the stages and the last stage's output channels."""
    stages = [[_ds_block(sw[0], sw[1], "relu6")]]
    c = sw[1]
    for (es, ks, n, s), cout in zip(cfgs, sw[2:]):
        blocks = []
        for i in range(n):
            blocks.append(_block(c, cout, ks[i], s if i == 0 else 1, make_divisible(round(es[i] * c), 8), "relu6"))
            c = cout
        stages.append(blocks)
    return stages, c


def proxyless(width_mult: float, name: str, resolution: int) -> Arch:
    sw = [make_divisible(w * width_mult, 8) for w in [32, 16, 32, 40, 80, 96, 192]]
    head = [make_divisible(w * width_mult, 8) for w in [320, 1280]]
    head[1] = max(head[1], 1280)
    cfgs = [
        ([3, 3], [5, 3], 2, 2),
        ([3, 3, 3, 3], [7, 3, 5, 5], 4, 2),
        ([6, 3, 3, 3], [7, 5, 5, 5], 4, 2),
        ([6, 3, 3, 3], [5, 5, 5, 5], 4, 1),
        ([6, 6, 3, 3], [7, 7, 7, 7], 4, 2),
    ]
    stages, c = _searched_stages(sw, cfgs)
    stages.append([_block(c, head[0], 7, 1, round(c * 6), "relu6")])
    return _arch(name, resolution, sw[0], "relu6", stages, {"out_channels": head[1], "act": "relu6"})


def mcunet(name: str = "mcunet", resolution: int = 176) -> Arch:
    sw = [16, 8, 16, 24, 40, 48, 96]
    cfgs = [
        ([3, 5, 5, 4], [7, 3, 7, 5], 4, 2),
        ([5, 5, 5], [5, 5, 5], 3, 2),
        ([5, 6, 4], [3, 7, 5], 3, 2),
        ([5, 5, 5], [5, 7, 3], 3, 1),
        ([6, 5, 4], [3, 7, 3], 3, 2),
    ]
    stages, c = _searched_stages(sw, cfgs)
    stages.append([_block(c, 160, 7, 1, 480, "relu6")])
    return _arch(name, resolution, sw[0], "relu6", stages)


def zoo() -> dict[str, Arch]:
    return {
        "mbv2-w0.35": mbv2(0.35, "mbv2-w0.35", 160),
        "mbv2-w1.0": mbv2(1.0, "mbv2-w1.0", 224),
        "mbv2-tiny": mbv2(0.35, "mbv2-tiny", 144, tiny=True),
        "mbv3-w0.35": mbv3(0.35, "mbv3-w0.35", 160),
        "proxyless-w0.35": proxyless(0.35, "proxyless-w0.35", 160),
        "mcunet": mcunet(),
    }


def main() -> None:
    out = ROOT / "search_spaces" / "baselines"
    for name, arch in zoo().items():
        arch.save(out / f"{name}.json")
        print(f"wrote {out / name}.json")


if __name__ == "__main__":
    main()

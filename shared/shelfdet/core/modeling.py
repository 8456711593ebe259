"""Model parts of ours, registered in Detectron2's registries so that configs name them.

RetinaNet trained from scratch needs a norm in its head (measured on the
synthetic set: AP 0.04 without, 0.66 with per-level BN), and BatchNorm must not
be shared across pyramid levels, whose statistics differ. Detectron2 0.6 keeps
one BN per level; v0.4.1 (the cu101 stack) shares one and warns "expect poor
results". :class:`LevelNormRetinaNet` uses the same per-level head on every
release, so a checkpoint has the same keys whichever stack trained it.
"""
from __future__ import annotations

import math
from typing import List

import torch
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from torch import nn

LEVEL_NORM_RETINANET = "LevelNormRetinaNet"


class LevelNormRetinaNetHead(nn.Module):
    """RetinaNet's two conv towers with shared convs and one norm layer per pyramid level."""

    def __init__(self, input_shape: List[ShapeSpec], num_classes: int, num_anchors: int, num_convs: int,
                 norm: str, prior_prob: float):
        super().__init__()
        channels = input_shape[0].channels
        self.num_levels = len(input_shape)

        def tower() -> nn.ModuleList:
            return nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_convs))

        def norms() -> nn.ModuleList:
            return nn.ModuleList(
                nn.ModuleList(get_norm(norm, channels) for _ in range(self.num_levels)) for _ in range(num_convs))

        self.cls_convs, self.cls_norms = tower(), norms()
        self.bbox_convs, self.bbox_norms = tower(), norms()
        self.cls_score = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        # Detectron2's RetinaNetHead initialisation, so training behaves as upstream's.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0, std=0.01)
                nn.init.constant_(module.bias, 0)
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

    @staticmethod
    def _tower(x: torch.Tensor, convs: nn.ModuleList, norms: nn.ModuleList, level: int) -> torch.Tensor:
        for conv, per_level in zip(convs, norms):
            x = torch.relu(per_level[level](conv(x)))
        return x

    def forward(self, features: List[torch.Tensor]):
        if len(features) != self.num_levels:
            raise ValueError("expected {} feature levels, got {}".format(self.num_levels, len(features)))
        logits, deltas = [], []
        for level, x in enumerate(features):
            logits.append(self.cls_score(self._tower(x, self.cls_convs, self.cls_norms, level)))
            deltas.append(self.bbox_pred(self._tower(x, self.bbox_convs, self.bbox_norms, level)))
        return logits, deltas


@META_ARCH_REGISTRY.register()
class LevelNormRetinaNet(RetinaNet):
    """Detectron2's RetinaNet with :class:`LevelNormRetinaNetHead` (``MODEL.RETINANET.NORM``)."""

    @classmethod
    def from_config(cls, cfg):
        norm = cfg.MODEL.RETINANET.NORM
        if not norm:
            raise ValueError("{} needs MODEL.RETINANET.NORM (e.g. BN); plain RetinaNet has no norm".format(
                LEVEL_NORM_RETINANET))
        # Upstream's head is built without its norm: it is replaced below, and v0.4.1
        # would warn about a shared BN that never trains.
        plain = cfg.clone()
        plain.defrost()
        plain.MODEL.RETINANET.NORM = ""
        ret = super().from_config(plain)
        shapes = [ret["backbone"].output_shape()[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
        anchors = build_anchor_generator(cfg, shapes).num_cell_anchors
        if len(set(anchors)) != 1:
            raise ValueError("every pyramid level needs the same number of anchors, got {}".format(anchors))
        ret["head"] = LevelNormRetinaNetHead(shapes, cfg.MODEL.RETINANET.NUM_CLASSES, anchors[0],
                                             cfg.MODEL.RETINANET.NUM_CONVS, norm, cfg.MODEL.RETINANET.PRIOR_PROB)
        return ret

"""The DCCNeXt classification head: pool -> Linear(C, hC) -> GELU -> LayerNorm -> Linear."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmpretrain.models.heads import ClsHead

from mmdccnext.registry import MODELS


@MODELS.register_module()
class DCCNeXtClsHead(ClsHead):
    """MLP classifier head of DCCNeXt for MMPretrain.

    ``feats[-1]`` (the pooled, normed last-stage vector of the backbone with
    ``gap_before_final_norm=True``) -> Linear(C, hC) -> GELU -> LayerNorm -> dropout
    -> Linear(hC, num_classes). The paper does not describe the head; this form with
    h = 4 reproduces the parameter counts of Table 1 for B1-B4, and a hidden width of
    1280 (h = 5) the 5.5 M of B0 (docs/en/architecture.md).

    Args:
        num_classes (int): Number of classes.
        in_channels (int): Channels C of the input vector.
        mid_channels (int, optional): Hidden width hC. Defaults to ``4 * in_channels``.
        dropout_rate (float): Dropout before the last Linear. Defaults to 0.
        norm_eps (float): LayerNorm epsilon. Defaults to 1e-6.
        **kwargs: ``loss``, ``topk``, ``cal_acc`` of :class:`mmpretrain.models.ClsHead`.
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 mid_channels: Optional[int] = None,
                 dropout_rate: float = 0.,
                 norm_eps: float = 1e-6,
                 init_cfg: Optional[dict] = [
                     dict(type='TruncNormal', layer='Linear', std=.02, bias=0.),
                     dict(type='Constant', layer='LayerNorm', val=1., bias=0.),
                 ],
                 **kwargs):
        loss = kwargs.get('loss')
        if isinstance(loss, dict) and '_scope_' not in loss:
            # build the loss in MMPretrain's scope even when this head is built under
            # another default scope (e.g. 'mmdccnext'), where MMPretrain's losses are unknown
            kwargs['loss'] = dict(loss, _scope_='mmpretrain')
        elif loss is None:
            kwargs['loss'] = dict(type='CrossEntropyLoss', loss_weight=1.0, _scope_='mmpretrain')
        super().__init__(init_cfg=init_cfg, **kwargs)
        if num_classes <= 0:
            raise ValueError(f'num_classes={num_classes} must be a positive integer')
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.mid_channels = mid_channels or 4 * in_channels
        self.fc1 = nn.Linear(in_channels, self.mid_channels)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(self.mid_channels, eps=norm_eps)
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()
        self.fc2 = nn.Linear(self.mid_channels, num_classes)

    def pre_logits(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        """The hidden vector (after the LayerNorm) of the last stage's feature."""
        x = feats[-1]
        if x.dim() == 4:  # a map, e.g. a backbone with gap_before_final_norm=False
            x = x.mean((2, 3))
        return self.norm(self.act(self.fc1(x)))

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        return self.fc2(self.dropout(self.pre_logits(feats)))

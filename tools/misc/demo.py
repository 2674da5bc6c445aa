"""`make demo`: the project's main job on embedded data.

Until the synthetic-data demo lands (issue "embedded default"), this is a smoke check:
it builds DCConv through the registry, clusters a small feature map, and reports which
implementation (fused C++ or PyTorch) ran.
"""
import torch

from mmdccnext.registry import MODELS
from mmdccnext.utils import register_all_modules


def main():
    register_all_modules()
    torch.manual_seed(0)
    op = MODELS.build(dict(type='DCConv', channels=64, kernel_size=12))
    x = torch.randn(2, 64, 14, 14, requires_grad=True)
    y = op(x)
    y.sum().backward()
    from mmdccnext.ops import cluster
    idx = cluster(x.detach().flatten(2).transpose(1, 2), 12)
    assert bool((idx[..., 0] == torch.arange(196)).all()), 'each cluster starts at its centre'
    print(f'[demo] DCConv forward+backward OK: input {tuple(x.shape)} -> {tuple(y.shape)}, '
          f'clusters {tuple(idx.shape)}, op: {op}')


if __name__ == '__main__':
    main()

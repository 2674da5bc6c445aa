"""Kernel-tap profiles of DCConv (paper Fig. 4): mean |weight| per cluster position.

Tap ``k`` of a DCConv kernel weighs the k-th member of every cluster (k = 0 the patch
itself, then the nearest first); averaging ``|W[k, c]|`` over the channels ``c`` shows how
much a block relies on closer versus farther members.
"""
import io
import os.path as osp
from collections import OrderedDict

import numpy as np

from .files import write_file_atomic
from .model import (dcconv_blocks, find_backbone, model_for_pictures, paper_block_number,
                    resolve_blocks)


def kernel_profiles(backbone):
    """``OrderedDict`` block name -> ``(K,)`` mean over channels of ``|W[k, :]|``."""
    return OrderedDict((name, block.mixer.weight.detach().abs().mean(dim=1).cpu().double()
                        .numpy()) for name, block in dcconv_blocks(backbone).items())


def profile_matrix(profiles):
    """``(blocks, max K)`` array of the profiles, NaN where a block has fewer taps."""
    width = max(len(p) for p in profiles.values())
    matrix = np.full((len(profiles), width), np.nan)
    for row, profile in enumerate(profiles.values()):
        matrix[row, :len(profile)] = profile
    return matrix


def plot_kernel_profiles(backbone, out, blocks=None, title=None):
    """Heat map of every DCConv block's profile and line plots of ``blocks``, as a PNG.

    Args:
        backbone: a DCCNeXt.
        out (str): PNG path, written atomically.
        blocks (list[str], optional): blocks for the line plots; default: the first DCConv
            block of each DCConv stage (the paper's Fig. 4 shows the 7th and 16th of B2).

    Returns:
        OrderedDict: the profiles of all DCConv blocks (see :func:`kernel_profiles`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not str(out).lower().endswith('.png'):
        raise ValueError(f'out: expected a .png path, got {out!r}')
    chosen = list(resolve_blocks(backbone, blocks))
    profiles = kernel_profiles(backbone)
    matrix = np.ma.masked_invalid(profile_matrix(profiles))
    labels = [f'{n} ({paper_block_number(backbone, n)})' for n in profiles]

    fig = Figure(figsize=(10, max(3.5, 0.28 * len(profiles) + 1.5)), dpi=100)
    FigureCanvasAgg(fig)
    heat_ax, line_ax = fig.subplots(1, 2, gridspec_kw=dict(width_ratios=[1.3, 1]))
    image = heat_ax.imshow(matrix, aspect='auto', cmap='viridis', interpolation='nearest')
    heat_ax.set_yticks(range(len(labels)), labels, fontsize=8)
    heat_ax.set_xticks(range(matrix.shape[1]))
    heat_ax.tick_params(axis='x', labelsize=7)
    heat_ax.set_xlabel('tap k (0: the patch itself, then nearest first)')
    heat_ax.set_title('mean |weight| per tap, all DCConv blocks (block number)', fontsize=9)
    fig.colorbar(image, ax=heat_ax, fraction=0.05, pad=0.02)
    for name in chosen:
        profile = profiles[name]
        line_ax.plot(range(len(profile)), profile, marker='o', markersize=3,
                     label=f'{name} (block {paper_block_number(backbone, name)})')
    line_ax.set_xlabel('tap k')
    line_ax.set_ylabel('mean |weight| over channels')
    line_ax.set_title('profiles of the chosen blocks', fontsize=9)
    line_ax.grid(alpha=0.3)
    line_ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png')
    write_file_atomic(out, buffer.getvalue())
    return profiles


def plot_kernel_profiles_from_config(config, out, checkpoint=None, blocks=None,
                                     cfg_options=None, seed=0):
    """:func:`plot_kernel_profiles` of the backbone of ``config`` (and ``checkpoint``)."""
    if not str(out).lower().endswith('.png'):
        raise ValueError(f'out: expected a .png path, got {out!r}')
    model = model_for_pictures(config, checkpoint, cfg_options, seed=seed)
    _, backbone = find_backbone(model)
    title = osp.basename(checkpoint) if checkpoint else 'random initialisation (no checkpoint)'
    return plot_kernel_profiles(backbone, out, blocks, title=title)

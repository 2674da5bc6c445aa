"""Where the patches of a DCCNeXt stage lie in the input image.

DCCNeXt neither pads nor requires sizes that are multiples of 32: the stem (7x7 conv,
stride 4, padding 2) gives ``floor((H + 1) / 4)`` rows and every downsampling (3x3 conv,
stride 2, padding 1) ``ceil(H / 2)``; a detector's or segmentor's data preprocessor may pad
the batch at the bottom and right, which adds patches without moving the others.

Patch ``i`` of a stage is placed at the centre of its receptive field, ``S * i + O`` in
continuous input coordinates (pixel ``p`` spans ``[p, p + 1)``), with the stride ``S`` and
offset ``O`` composed from the convolutions of the stem and the downsampling layers. For
DCCNeXt ``O = 1.5`` at every stage (strides 4, 8, 16, 32). A pixel belongs to the patch whose
centre is nearest; a patch's box is the set of such pixels: ``[O + S (i - 1/2),
O + S (i + 1/2))``, the first and last box of each axis stretched to the border. The boxes
tile the input exactly, so the box drawn for a patch contains every pixel that maps to it.
"""
import math
from dataclasses import dataclass

import numpy as np


def stage_stride_offset(backbone, stage):
    """``((stride_y, stride_x), (offset_y, offset_x))`` of the patches of ``stage``.

    Composed from the convolutions of ``backbone.downsample_layers[:stage + 1]``: an output
    index ``i`` of a convolution (kernel k, stride s, padding p, dilation d) is centred on its
    input index ``s * i + d * (k - 1) / 2 - p``.
    """
    strides, offsets = [1, 1], [0.5, 0.5]  # pixel p is centred at p + 0.5
    for layer in backbone.downsample_layers[:stage + 1]:
        conv = layer.conv
        for axis in (0, 1):
            k, s = conv.kernel_size[axis], conv.stride[axis]
            p, d = conv.padding[axis], conv.dilation[axis]
            offsets[axis] += strides[axis] * (d * (k - 1) / 2 - p)
            strides[axis] *= s
    return tuple(strides), tuple(offsets)


@dataclass(frozen=True)
class PatchGrid:
    """The patches of one stage for one input.

    Attributes:
        shape (tuple): ``(rows, cols)`` of the feature map.
        stride (tuple): ``(stride_y, stride_x)`` in input pixels.
        offset (tuple): ``(offset_y, offset_x)``, centre of patch (0, 0) in input pixels.
        input_shape (tuple): ``(H, W)`` of the network input (padding included).
    """
    shape: tuple
    stride: tuple
    offset: tuple
    input_shape: tuple

    @classmethod
    def of_stage(cls, backbone, stage, shape, input_shape):
        stride, offset = stage_stride_offset(backbone, stage)
        return cls(tuple(shape), stride, offset, tuple(input_shape))

    @property
    def num_patches(self):
        return self.shape[0] * self.shape[1]

    def _index(self, coord, axis):
        i = math.floor((coord - self.offset[axis]) / self.stride[axis] + 0.5)
        return min(max(i, 0), self.shape[axis] - 1)

    def patch_at(self, x, y):
        """Flat index (``row * cols + col``) of the patch of the continuous input point."""
        return self._index(y, 0) * self.shape[1] + self._index(x, 1)

    def patch_centers(self):
        """``(N, 2)`` array of ``(x, y)`` receptive-field centres, input pixels."""
        rows, cols = np.divmod(np.arange(self.num_patches), self.shape[1])
        return np.stack([cols * self.stride[1] + self.offset[1],
                         rows * self.stride[0] + self.offset[0]], axis=1)

    def boxes(self):
        """``(N, 4)`` ``(x1, y1, x2, y2)`` boxes tiling the input, in input pixels."""
        edges = []
        for axis in (0, 1):
            n = self.shape[axis]
            bounds = self.offset[axis] + self.stride[axis] * (np.arange(n + 1) - 0.5)
            bounds[0] = min(bounds[0], 0.)
            bounds[-1] = max(bounds[-1], float(self.input_shape[axis]))
            edges.append(np.clip(bounds, 0., float(self.input_shape[axis])))
        (y_edges, x_edges) = edges
        rows, cols = np.divmod(np.arange(self.num_patches), self.shape[1])
        return np.stack([x_edges[cols], y_edges[rows], x_edges[cols + 1], y_edges[rows + 1]],
                        axis=1)

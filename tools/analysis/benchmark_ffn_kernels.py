"""Benchmark the Conv-FFN's kernels against what DCCNeXt ran before them, on DCCNeXt-B2's
shapes: the extension's depthwise convolutions against oneDNN's, and oneDNN's matmul for the
narrow products against ATen's ``addmm`` / ``mm`` (MKL's sgemm in PyTorch's x86 builds).

Each comparison runs in one process, round robin (every repetition times both sides one after
the other), medians and ratios. On the Conv-FFN's maps (channels-last ``(B, H, W, 6C)``,
float32):

* ``forward into a buffer``: the inference fast path; ours writing into a reused buffer
  against oneDNN's in-place ``out += conv(x)`` on the zeroed buffer.
* ``forward, new output``: the training node's forward (its output is kept for the backward
  pass); ours against ``aten.convolution``.
* ``backward``: the training node's; ours writing the input gradient into a reused buffer
  against ``aten.convolution_backward`` (input, weight and bias gradients).

The backward of the 7x7 depthwise mixers of stages 1-2 (channels-last ``(B, H, W, C)``):
``depthwise.conv_backward`` (oneDNN's input gradient, the extension's weight and bias
gradients) against ``aten.convolution_backward``.

The linear layers (:mod:`mmdccnext.ops.linear`; rows, 6C, C): ``fc2 forward``,
``onednn_linear`` against ``F.linear``; ``fc1 input gradient`` (the training node's),
``onednn_linear`` of the transposed weight against ``torch.mm``; ``fc1 forward into a
buffer`` (the inference fast path's), oneDNN's new output up to ``FRESH_PAGES_BYTES`` and
``addmm`` into the buffer beyond, against ``addmm`` into the buffer.

The depthwise kernels run the ISA the extension picks (``MMDCCNEXT_CPU_ISA`` forces one);
oneDNN and MKL pick their own. Example::

    python tools/analysis/benchmark_ffn_kernels.py --threads 1 --repeat 7
"""
import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from mmdccnext.deployment.benchmark import machine
from mmdccnext.models.backbones.inference import Workspace
from mmdccnext.ops import cpu_impl, depthwise, linear

#: B2's Conv-FFN maps (B, H, W, 6C): a training batch of 224^2 images, one 1280x800 image
SHAPES = {
    'training 224² b16': [(16, 56, 56, 384), (16, 28, 28, 768), (16, 14, 14, 1920),
                          (16, 7, 7, 3072)],
    'inference 1280×800 b1': [(1, 200, 320, 384), (1, 100, 160, 768), (1, 50, 80, 1920),
                              (1, 25, 40, 3072)],
}

#: B2's 7x7 mixer maps (B, H, W, C), stages 1-2 of a training batch of 224^2 images
MIXER_SHAPES = {'training 224² b16': [(16, 56, 56, 64), (16, 28, 28, 128)]}

#: B2's Conv-FFN linear layers (rows, 6C, C), the same maps as SHAPES
LINEAR_SHAPES = {
    'training 224² b16': [(50176, 384, 64), (12544, 768, 128), (3136, 1920, 320),
                          (784, 3072, 512)],
    'inference 1280×800 b1': [(64000, 384, 64), (16000, 768, 128), (4000, 1920, 320),
                              (1000, 3072, 512)],
}


def _random(shape, kernel_size):
    C = shape[-1]
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen),
            torch.randn(C, 1, kernel_size, kernel_size, generator=gen))


def comparisons(shape):
    """{name: (ours, oneDNN's)}: zero-argument callables on fresh random tensors."""
    C = shape[-1]
    x, grad, w = _random(shape, 3)
    b = torch.randn(C, generator=torch.Generator().manual_seed(1))
    buf = torch.empty_like(x)
    aten = torch.ops.aten
    conv_add = torch.ops.mkldnn._convolution_pointwise_.binary
    nchw = x.permute(0, 3, 1, 2)
    return {
        'forward into a buffer':
        (lambda: depthwise.forward(x, w, b, out=buf),
         lambda: conv_add(buf.zero_().permute(0, 3, 1, 2), nchw, w, b, [1, 1], [1, 1], [1, 1], C,
                          'add', 1.0, None, [], None)),
        'forward, new output':
        (lambda: depthwise.forward(x, w, b),
         lambda: aten.convolution(nchw, w, b, *depthwise.conv_args(w))),
        'backward':
        (lambda: depthwise.backward(grad, x, w, grad_x_out=buf), lambda: aten.convolution_backward(
            grad.permute(0, 3, 1, 2), nchw, w, [C], *depthwise.conv_args(w), [True, True, True])),
    }


def mixer_comparisons(shape):
    """{name: (ours, oneDNN's)} for the 7x7 mixer on ``shape``, as :func:`comparisons`."""
    C = shape[-1]
    x, grad, w = _random(shape, 7)
    return {
        'backward, 7×7 mixer': (lambda: depthwise.conv_backward(grad, x, w),
                                lambda: torch.ops.aten.convolution_backward(
                                    grad.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2), w, [C],
                                    *depthwise.conv_args(w), [True, True, True])),
    }


def linear_comparisons(shape):
    """{name: (ours, before)} for the narrow products on ``shape`` (rows, 6C, C)."""
    rows, hidden, C = shape
    gen = torch.Generator().manual_seed(0)
    x, h = torch.randn(rows, C, generator=gen), torch.randn(rows, hidden, generator=gen)
    w1, b1 = torch.randn(hidden, C, generator=gen), torch.randn(hidden, generator=gen)
    w2, b2 = torch.randn(C, hidden, generator=gen), torch.randn(C, generator=gen)
    buf = torch.empty(rows, hidden)
    # ours: the fast path's own call (Workspace.linear) with the model's fc1 layer
    # (without autograd, as the fast path runs: ATen's out= form refuses parameters that
    # require grad, the path of an output over the limit)
    fc1 = linear.OneDNNLinear(C, hidden, max_output_bytes=linear.FRESH_PAGES_BYTES)
    with torch.no_grad():
        fc1.weight.copy_(w1), fc1.bias.copy_(b1)
    fc1.requires_grad_(False)
    workspace = Workspace()
    return {
        'fc2 forward': (lambda: linear.onednn_linear(h, w2, b2), lambda: F.linear(h, w2, b2)),
        'fc1 input gradient': (lambda: linear.onednn_linear(h, w1.t()), lambda: torch.mm(h, w1)),
        'fc1 forward into a buffer': (lambda: workspace.linear(fc1, x, 'fc1'),
                                      lambda: torch.addmm(b1, x, w1.t(), out=buf)),
    }


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--repeat', type=int, default=7, help='round-robin repetitions')
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeat < 1:
        parser.error('--threads and --repeat must be >= 1')
    if not cpu_impl.ext_available():
        parser.error(f'the C++ extension is not built ({cpu_impl.ext_error()})')
    torch.set_num_threads(args.threads)
    print(f'{machine()}; {os.cpu_count()} CPUs, torch {torch.__version__}')
    print('| setting | shape | operation | ours ms | before ms | before ÷ ours |')
    print('|---|---|---|---|---|---|')
    cases = [(setting, shape, comparisons) for setting, shapes in SHAPES.items()
             for shape in shapes]
    cases += [(setting, shape, mixer_comparisons) for setting, shapes in MIXER_SHAPES.items()
              for shape in shapes]
    cases += [(setting, shape, linear_comparisons) for setting, shapes in LINEAR_SHAPES.items()
              for shape in shapes]
    for setting, shape, calls in cases:
        for name, (ours, theirs) in calls(shape).items():
            ours(), theirs()  # warm-up
            times = [(_timed(ours), _timed(theirs)) for _ in range(args.repeat)]
            a = statistics.median(t[0] for t in times) * 1e3
            b = statistics.median(t[1] for t in times) * 1e3
            ratio = statistics.median(t[1] / t[0] for t in times)
            print(
                f'| {setting} | {shape} | {name} | {a:.1f} | {b:.1f} | {ratio:.2f}× |',
                flush=True)


if __name__ == '__main__':
    main()

"""What deployment costs: an exported model in ONNX Runtime next to the eager PyTorch model.

* images/s: both in *this* process, on the same input and threads, timed in interleaved
  rounds (:func:`mmdccnext.analysis.inference_benchmark.time_interleaved`); the ratio is the
  median over rounds of ONNX Runtime / eager.
* peak memory: each side in a *fresh* process (a process's high-water mark cannot be reset
  below what it already holds): after the imports the resident set is read and its
  high-water mark reset (``/proc/self/status``, Linux), the model (or the session) and the
  input are created and two forward passes run. *model + inference* = high-water mark minus
  the resident set after the imports; *inference* = high-water mark minus the resident set
  once the model and input exist.

The ONNX Runtime sessions are :func:`.onnx.ort_session`'s (CPU, ``threads`` intra-op).
"""
import json
import os
import subprocess
import sys

import numpy as np
import torch

from mmdccnext.utils.memory import proc_status, reset_peak_rss

EAGER, ORT = 'PyTorch (eager)', 'ONNX Runtime'


def machine():
    """CPU model, DCConv's C++ ISA, torch's threads and the 1-minute load, in words."""
    model = 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as f:
            model = next(line.split(':', 1)[1].strip() for line in f
                         if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    from mmdccnext.ops.cpu_impl import cpu_isa
    isa = cpu_isa() or 'no C++ extension'
    return (f'{model}, DCConv C++ kernels: {isa}, {torch.get_num_threads()} thread(s), '
            f'load {os.getloadavg()[0]:.1f}')


def _measure(build, runs=2):
    """Peak memory of ``build()`` (returns a callable) and ``runs`` calls of it."""
    base = proc_status()['VmRSS']
    reset_peak_rss()
    run = build()
    loaded = proc_status()['VmRSS']
    for _ in range(runs):
        run()
    peak = proc_status()['VmHWM']
    return dict(total_bytes=peak - base, inference_bytes=peak - loaded)


def _child_main(spec):
    """In a fresh process (:func:`measure_in_child`): the memory of one side."""
    torch.set_num_threads(spec['threads'])
    kind = spec['kind']
    if kind == 'ort':
        import onnxruntime  # noqa: F401  (imports before the baseline)

        from .onnx import ort_session

        def build():
            session = ort_session(spec['onnx'], spec['threads'])
            feed = {session.get_inputs()[0].name: np.load(spec['input'])}
            return lambda: session.run(None, feed)
    elif kind == 'classifier':
        from mmdccnext.apis.inference import init_model
        from .onnx import classifier_module

        def build():
            model = init_model(spec['config'], spec.get('checkpoint'))
            module = classifier_module(model).eval()
            x = torch.from_numpy(np.load(spec['input']))
            return _eager_call(module, x)
    elif kind == 'dcconv':

        def build():
            layer = _dcconv_layer(spec['channels'], spec['kernel_size'])
            return _eager_call(layer, torch.from_numpy(np.load(spec['input'])))
    else:
        raise ValueError(f'unknown kind {kind!r}')
    return _measure(build)


def measure_in_child(spec):
    """Run :func:`_child_main` with ``spec`` (a JSON-able dict) in a fresh interpreter."""
    code = ('import json, sys; from mmdccnext.deployment.benchmark import _child_main; '
            'print(json.dumps(_child_main(json.loads(sys.argv[1]))))')
    proc = subprocess.run([sys.executable, '-c', code, json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f'memory measurement ({spec["kind"]}) failed:\n'
                           f'{proc.stderr[-3000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _eager_call(module, x):

    def run():
        with torch.inference_mode():
            return module(x)

    return run


def _dcconv_layer(channels, kernel_size, seed=0):
    """A DCConv layer with random (normal) weights and bias, in eval mode."""
    from mmdccnext.ops import DCConv
    torch.manual_seed(seed)
    layer = DCConv(channels, kernel_size)
    torch.nn.init.normal_(layer.weight)
    torch.nn.init.normal_(layer.bias)
    return layer.eval()


def time_side_by_side(eager_run, ort_run, batch, repeat=3, min_seconds=1.0):
    """Images/s of both runners, interleaved rounds in this process (module docstring)."""
    from mmdccnext.analysis.inference_benchmark import time_interleaved
    return time_interleaved({EAGER: eager_run, ORT: ort_run}, batch, repeat, min_seconds,
                            reference=EAGER)


def compare_classifier(config, checkpoint, onnx_file, image, threads=1, repeat=3,
                       min_seconds=1.0, work_dir=None):
    """The exported classifier ``onnx_file`` in ONNX Runtime next to the eager classifier
    of ``config`` / ``checkpoint`` on the normalised ``image`` (B, 3, H, W) float32 array.

    Returns ``{'eager': {...}, 'ort': {...}, 'ratio_ips', 'ratio_total_memory',
    'ratio_inference_memory', 'machine'}``; each side has ``ips`` (median images/s),
    ``total_bytes`` and ``inference_bytes``.
    """
    import tempfile

    from mmdccnext.apis.inference import init_model
    from .onnx import classifier_module, ort_session
    torch.set_num_threads(threads)
    image = np.ascontiguousarray(image, dtype=np.float32)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        path = os.path.join(tmp, 'input.npy')
        np.save(path, image)
        common = dict(threads=threads, input=path)
        mem_eager = measure_in_child(
            dict(common, kind='classifier', config=str(config), checkpoint=checkpoint))
        mem_ort = measure_in_child(dict(common, kind='ort', onnx=str(onnx_file)))
    module = classifier_module(init_model(config, checkpoint)).eval()
    session = ort_session(str(onnx_file), threads)
    feed = {session.get_inputs()[0].name: image}
    timing = time_side_by_side(
        _eager_call(module, torch.from_numpy(image)), lambda: session.run(None, feed),
        image.shape[0], repeat, min_seconds)
    return _summary(timing, mem_eager, mem_ort)


def _summary(timing, mem_eager, mem_ort):
    eager = dict(ips=timing[EAGER]['median_ips'], **mem_eager)
    ort = dict(ips=timing[ORT]['median_ips'], **mem_ort)
    return dict(
        eager=eager, ort=ort, ratio_ips=timing[ORT]['ratio'],
        ratio_total_memory=ort['total_bytes'] / max(eager['total_bytes'], 1),
        ratio_inference_memory=ort['inference_bytes'] / max(eager['inference_bytes'], 1),
        machine=machine())


def format_comparison(result):
    """Lines a user reads: images/s and peak memory of both sides, and the ratios."""
    mib = 2**20
    e, o = result['eager'], result['ort']
    return '\n'.join([
        f'on {result["machine"]}:',
        f'  {"":20s} {"images/s":>10s} {"model + inference":>18s} {"inference":>10s}',
        f'  {EAGER:20s} {e["ips"]:10.2f} {e["total_bytes"] / mib:14.0f} MiB '
        f'{e["inference_bytes"] / mib:6.0f} MiB',
        f'  {ORT:20s} {o["ips"]:10.2f} {o["total_bytes"] / mib:14.0f} MiB '
        f'{o["inference_bytes"] / mib:6.0f} MiB',
        f'  ONNX Runtime / eager: images/s {result["ratio_ips"]:.2f}x (median of interleaved '
        f'rounds), peak memory {result["ratio_total_memory"]:.2f}x (model + inference), '
        f'{result["ratio_inference_memory"]:.2f}x (inference)',
    ])


def _map_shape(N):
    """(H, W) with H * W = N, H the largest divisor of N not above sqrt(N)."""
    H = max(h for h in range(1, int(N**0.5) + 1) if N % h == 0)
    return H, N // H


def export_dcconv_layer(channels, kernel_size, onnx_file):
    """Export :func:`_dcconv_layer` on (1, C, H, W) maps, H and W symbolic."""
    import warnings
    layer = _dcconv_layer(channels, kernel_size)
    auto = torch.export.Dim.AUTO
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        program = torch.onnx.export(
            layer, (torch.randn(1, channels, 24, 32), ),
            input_names=['x'],
            output_names=['y'],
            dynamic_shapes={'x': {2: auto, 3: auto}},
            dynamo=True,
            verbose=False)
    program.save(str(onnx_file))
    return layer


def compare_dcconv_layer(channels, kernel_size, sizes, onnx_file, threads=1, repeat=3,
                         min_seconds=1.0, log=print):
    """One DCConv layer, eager and exported, on (1, C, H, W) maps of N = H * W patches for
    every N of ``sizes``: extra peak memory (fresh processes) and time (interleaved, this
    process). Returns a list of rows."""
    import tempfile

    from .onnx import ort_session
    torch.set_num_threads(threads)
    layer = _dcconv_layer(channels, kernel_size)
    session = ort_session(str(onnx_file), threads)
    rows = []
    for N in sizes:
        H, W = _map_shape(N)
        g = torch.Generator().manual_seed(N)
        x = torch.randn(1, channels, H, W, generator=g)
        feed = {'x': x.numpy()}
        with torch.inference_mode():
            expected = layer(x)
        got = torch.from_numpy(session.run(None, feed)[0])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'x.npy')
            np.save(path, x.numpy())
            common = dict(threads=threads, input=path)
            mem_eager = measure_in_child(
                dict(common, kind='dcconv', channels=channels, kernel_size=kernel_size))
            mem_ort = measure_in_child(dict(common, kind='ort', onnx=str(onnx_file)))
        load = os.getloadavg()[0]
        timing = time_side_by_side(
            _eager_call(layer, x), lambda: session.run(None, feed), 1, repeat, min_seconds)
        row = dict(N=N, H=H, W=W, load=load, **_summary(timing, mem_eager, mem_ort))
        rows.append(row)
        log(format_layer_row(row))
    return rows


def format_layer_row(row):
    mib = 2**20
    e, o = row['eager'], row['ort']
    return (f'| {row["N"]} ({row["H"]}x{row["W"]}) | {e["inference_bytes"] / mib:.1f} | '
            f'{o["inference_bytes"] / mib:.1f} | {row["ratio_inference_memory"]:.2f}x | '
            f'{1e3 / e["ips"]:.1f} | {1e3 / o["ips"]:.1f} | {1 / row["ratio_ips"]:.2f}x | '
            f'{row["load"]:.1f} |')


LAYER_HEADER = ('| N (H x W) | eager extra peak MiB | ORT extra peak MiB | ORT / eager memory '
                '| eager ms | ORT ms | ORT / eager time | load |\n'
                '|---|---|---|---|---|---|---|---|')

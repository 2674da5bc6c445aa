"""Inference speed and memory of DCCNeXt backbones next to MMPretrain's ConvNeXt-T and
ResNet-50, in PyTorch eager, under ``torch.compile`` (timed beside eager) and in ONNX Runtime
(CPU).

Every model is built from its registry (``mmdccnext.DCCNeXt``, ``mmpretrain.ConvNeXt``,
``mmpretrain.ResNet``) with random weights (speed does not depend on them), runs in the same
process with the same number of threads on the same input. Settings:

* ``224x224 b1`` / ``224x224 b32``: classification backbones (last stage; DCCNeXt and
  ConvNeXt pool and norm it, ResNet returns the map).
* ``1280x800 b1``: detection backbones (the four stage maps).

Timing. The machine may be shared, so absolute times drift; ratios taken close together in
time hold better. Each *round* times every model once (their order rotates from round to
round), and each timing runs enough forward passes to last ``min_seconds``. The table gives
the median images/s over the rounds and the median over rounds of the per-round ratio to
the reference model (ConvNeXt-T).

Memory. Each (model, engine, setting) runs in a fresh process (``/proc/self/status``,
Linux only): after the imports, the resident set is read and its high-water mark reset;
then the model (or the ONNX Runtime session) and the input are created, the resident set is
read again, and two forward passes run. Reported: *model + inference* = high-water mark
minus the resident set after the imports (weights, prepacked weights, activations,
workspaces, allocator and runtime caches: what serving the model adds to the process), and
*inference* = high-water mark minus the resident set with the model loaded (the passes
alone; an underestimate where the passes reuse memory freed while loading, e.g. by ONNX
Runtime's weight prepacking).
"""
import json
import math
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
from collections import OrderedDict, namedtuple

import torch

from mmdccnext.apis.inference import config_file, quiet_init_weights
from mmdccnext.deployment import backbone_module, export_module, ort_session
from mmdccnext.models.backbones.inference import PROFILER_RANGE
from mmdccnext.registry import MODELS
from mmdccnext.utils.memory import proc_status, reset_peak_rss

Setting = namedtuple('Setting', 'name batch height width dense')

SETTINGS = OrderedDict(
    (s.name, s) for s in (Setting('224x224 b1', 1, 224, 224, False),
                          Setting('224x224 b32', 32, 224, 224, False),
                          Setting('1280x800 b1', 1, 800, 1280, True)))
MODEL_NAMES = ('DCCNeXt-B0', 'DCCNeXt-B1', 'DCCNeXt-B2', 'ConvNeXt-T', 'ResNet-50')
REFERENCE = 'ConvNeXt-T'
ENGINES = ('torch', 'ort', 'compile')


def backbone_cfg(name, dense):
    """Registry config of a benchmarked backbone; ``dense``: the four stage maps."""
    stages = (0, 1, 2, 3)
    if name.startswith('DCCNeXt-'):
        return dict(
            type='mmdccnext.DCCNeXt',
            arch=name.split('-')[1].lower(),
            out_indices=stages if dense else (3, ),
            gap_before_final_norm=not dense)
    if name == 'ConvNeXt-T':
        return dict(
            type='mmpretrain.ConvNeXt',
            arch='tiny',
            out_indices=stages if dense else (3, ),
            gap_before_final_norm=not dense)
    if name == 'ResNet-50':
        return dict(type='mmpretrain.ResNet', depth=50, out_indices=stages if dense else (3, ))
    raise KeyError(f'unknown model {name!r}; choose from {MODEL_NAMES}')


def build_backbone(name, dense):
    """The backbone ``name`` in eval mode, built from the registries as the libraries build
    it (nothing else is called on it)."""
    import mmpretrain.models  # noqa: F401  (registers mmpretrain's models)

    model = MODELS.build(backbone_cfg(name, dense))
    model.eval()  # not model = model.eval(): MMPretrain's ConvNeXt.train returns None
    return model


def make_input(setting, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(setting.batch, 3, setting.height, setting.width, generator=gen)


def torch_runner(model, x):
    """One eager forward pass without autograd."""

    def run():
        with torch.inference_mode():
            return model(x)

    return run


def onnx_file(work_dir, name, setting):
    tag = f'{name}_{setting.batch}x{setting.height}x{setting.width}_{int(setting.dense)}'
    return osp.join(work_dir, tag.lower() + '.onnx')


def export_for_benchmark(name, setting, work_dir, model=None):
    """Export ``name`` for ``setting`` (static shape) once; later calls reuse the file."""
    path = onnx_file(work_dir, name, setting)
    if not osp.isfile(path):
        model = model if model is not None else build_backbone(name, setting.dense)
        outputs = [f'out{i}' for i in range(4 if setting.dense else 1)]
        export_module(backbone_module(model), (setting.height, setting.width), path,
                      outputs, batch=setting.batch)
    return path


def ort_runner(path, x, threads):
    session = ort_session(path, threads)
    feed = {session.get_inputs()[0].name: x.numpy()}

    def run():
        return session.run(None, feed)

    return run


def time_interleaved(runners, batch, repeat=5, min_seconds=1.0, reference=REFERENCE):
    """Images/s of every runner, measured in ``repeat`` interleaved rounds.

    Args:
        runners (dict): name -> callable running one forward pass of ``batch`` images.

    Returns:
        dict: name -> ``{'ips': [per round], 'median_ips', 'ratio': median over rounds of
        ips / reference's ips (None without the reference), 'cpu_ratio': the same ratio of
        the process's CPU time per image}``. On a loaded machine the wall-clock ratio is
        noisy; with one thread the CPU-time ratio is the steadier measure of the work done.
    """
    names = list(runners)
    iters = {}
    for name in names:  # warm-up, and the passes one timing needs
        t0 = time.perf_counter()
        runners[name]()
        iters[name] = max(1, math.ceil(min_seconds / max(time.perf_counter() - t0, 1e-6)))
    ips = {name: [] for name in names}
    cpu_ips = {name: [] for name in names}
    for r in range(repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:
            n = iters[name]
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                runners[name]()
            ips[name].append(n * batch / (time.perf_counter() - t0))
            cpu_ips[name].append(n * batch / max(time.process_time() - c0, 1e-9))
    result = {}
    for name in names:
        ratio = cpu_ratio = None
        if reference in ips:
            ratio = statistics.median(a / b for a, b in zip(ips[name], ips[reference]))
            cpu_ratio = statistics.median(
                a / b for a, b in zip(cpu_ips[name], cpu_ips[reference]))
        result[name] = dict(ips=ips[name], median_ips=statistics.median(ips[name]), ratio=ratio,
                            cpu_ratio=cpu_ratio)
    return result


def memory_child(spec):
    """In a fresh process: memory of the model and two forward passes (module docstring)."""
    torch.set_num_threads(spec['threads'])
    setting = SETTINGS[spec['setting']]
    if spec['engine'] == 'torch':
        import mmpretrain.models  # noqa: F401
    else:
        import onnxruntime  # noqa: F401
    base = proc_status()['VmRSS']
    reset_peak_rss()  # VmHWM := VmRSS
    x = make_input(setting)
    if spec['engine'] == 'torch':
        run = torch_runner(build_backbone(spec['model'], setting.dense), x)
    else:
        run = ort_runner(spec['onnx'], x, spec['threads'])
    loaded = proc_status()['VmRSS']
    run()
    run()
    peak = proc_status()['VmHWM']
    return dict(total_bytes=peak - base, inference_bytes=peak - loaded)


def _child(function, spec, what):
    """``function(spec)`` of this module in a fresh Python process (its JSON result)."""
    code = (f'import json, sys; from mmdccnext.analysis.inference_benchmark import '
            f'{function}; print(json.dumps({function}(json.loads(sys.argv[1]))))')
    proc = subprocess.run([sys.executable, '-c', code, json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f'memory subprocess for {what} failed:\n{proc.stderr[-3000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_memory(model, engine, setting, threads, onnx=None):
    spec = dict(model=model, engine=engine, setting=setting.name, threads=threads, onnx=onnx)
    return _child('memory_child', spec, f'{model} / {engine} / {setting.name}')


# ------------------------------------------------------------------------------------
# Whole models: our detector / segmentor configs against their ConvNeXt-T twins
# ------------------------------------------------------------------------------------
WholeModel = namedtuple('WholeModel', 'name zoo_name library height width')

#: The paper's downstream models (Tables 3-4), by model-zoo name, at the resolution they are
#: evaluated at.
WHOLE_MODELS = OrderedDict((w.name, w) for w in (
    WholeModel('RetinaNet', 'retinanet_dccnext-b2_fpn_1x_coco', 'mmdet', 800, 1280),
    WholeModel('Mask R-CNN', 'mask-rcnn_dccnext-b2_fpn_1x_coco', 'mmdet', 800, 1280),
    WholeModel('Semantic FPN', 'fpn_dccnext-b2_4xb8-40k_ade20k-512x512', 'mmseg', 512, 512),
))
WHOLE_BACKBONES = ('DCCNeXt-B2', 'ConvNeXt-T')
CONVNEXT_T_CHANNELS = (96, 192, 384, 768)
WHOLE_REST = 'rest (pipeline, post-processing, heads run outside forward)'


def whole_model_cfg(task, backbone):
    """The config of the whole model ``task`` (a key of :data:`WHOLE_MODELS`) with
    ``backbone``: ``'DCCNeXt-B2'`` is our config file as is; ``'ConvNeXt-T'`` is the same
    config with ``mmpretrain.ConvNeXt`` tiny (the same stages out, the same drop-path rate) and
    the neck's input widths set to its channels.

    Mask R-CNN's second stage keeps every box (``test_cfg.rcnn.score_thr = 0``): the models
    have random weights (:func:`build_whole_model`), whose class scores stay below the usual
    0.05, which would skip the mask head that a trained model runs on up to 100 boxes; so both
    twins run it on 100 boxes.
    """
    from mmengine.config import Config

    if task not in WHOLE_MODELS:
        raise KeyError(f'unknown whole model {task!r}; choose from {list(WHOLE_MODELS)}')
    if backbone not in WHOLE_BACKBONES:
        raise KeyError(f'unknown backbone {backbone!r}; choose from {list(WHOLE_BACKBONES)}')
    cfg = Config.fromfile(config_file(WHOLE_MODELS[task].zoo_name))
    ours = cfg.model.backbone
    ours.init_cfg = None  # random weights: speed does not depend on them
    if backbone == 'ConvNeXt-T':
        import mmpretrain.models  # noqa: F401  (registers mmpretrain.ConvNeXt)
        cfg.model.backbone = dict(
            type='mmpretrain.ConvNeXt', arch='tiny', out_indices=ours.out_indices,
            drop_path_rate=ours.drop_path_rate, gap_before_final_norm=False)
        cfg.model.neck.in_channels = [CONVNEXT_T_CHANNELS[i] for i in ours.out_indices]
    if 'rcnn' in cfg.model.get('test_cfg', {}):
        cfg.model.test_cfg.rcnn.score_thr = 0.
    return cfg


def build_whole_model(task, backbone, seed=0):
    """The whole model, built by its library's own API (``mmdet.apis.init_detector``,
    ``mmseg.apis.init_model``) on the CPU, as a user builds it, with the random weights of
    the config's initialisation (``init_weights``: the heads' prior-probability biases, as at
    the start of training; PyTorch's default initialisation would score every anchor about
    0.5 and send all of them through the post-processing)."""
    cfg = whole_model_cfg(task, backbone)
    torch.manual_seed(seed)
    if WHOLE_MODELS[task].library == 'mmdet':
        from mmdet.apis import init_detector
        model = init_detector(cfg, device='cpu')
    else:
        from mmseg.apis import init_model
        model = init_model(cfg, device='cpu')
    quiet_init_weights(model)
    return model


def make_image(task, seed=0):
    """A random ``(H, W, 3)`` uint8 image of the size ``task`` is evaluated at."""
    import numpy as np
    w = WHOLE_MODELS[task]
    return np.random.default_rng(seed).integers(0, 256, (w.height, w.width, 3), dtype=np.uint8)


def whole_runner(task, model, image):
    """One image through the library's inference API (``inference_detector`` /
    ``inference_model``: test pipeline, data preprocessor, model, post-processing)."""
    if WHOLE_MODELS[task].library == 'mmdet':
        from mmdet.apis import inference_detector
        return lambda: inference_detector(model, image)
    from mmseg.apis import inference_model
    return lambda: inference_model(model, image)


def whole_memory_child(spec):
    """In a fresh process: memory of a whole model and two images through it."""
    torch.set_num_threads(spec['threads'])
    import mmdet.apis  # noqa: F401
    import mmpretrain.models  # noqa: F401
    import mmseg.apis  # noqa: F401
    base = proc_status()['VmRSS']
    reset_peak_rss()
    run = whole_runner(spec['task'], build_whole_model(spec['task'], spec['backbone']),
                       make_image(spec['task']))
    loaded = proc_status()['VmRSS']
    run()
    run()
    peak = proc_status()['VmHWM']
    return dict(total_bytes=peak - base, inference_bytes=peak - loaded)


def measure_whole_memory(task, backbone, threads):
    spec = dict(task=task, backbone=backbone, threads=threads)
    return _child('whole_memory_child', spec, f'{task} / {backbone}')


def whole_breakdown(task, model, image):
    """Milliseconds of one image by part of the model: each direct child of the model
    whose ``forward`` runs (data preprocessor, backbone, neck, heads; forward hooks) and the
    rest (test pipeline, post-processing such as NMS, heads that ``predict`` without calling
    the module, e.g. MMSegmentation's decode head, Python). Also the layout of the maps the
    backbone hands to the neck."""
    timings, starts, layout = OrderedDict(), {}, []

    def pre(name):
        def hook(module, args):
            starts[name] = time.perf_counter()
        return hook

    def post(name):
        def hook(module, args, out):
            timings[name] = timings.get(name, 0.) + (time.perf_counter() - starts[name]) * 1e3
            if name == 'backbone':
                layout[:] = [(tuple(o.shape), o.stride(), o.is_contiguous()) for o in out]
        return hook

    run = whole_runner(task, model, image)
    run()  # warm-up
    handles = []
    for name, child in model.named_children():
        handles += [child.register_forward_pre_hook(pre(name)),
                    child.register_forward_hook(post(name))]
    try:
        t0 = time.perf_counter()
        run()
        total = (time.perf_counter() - t0) * 1e3
    finally:
        for h in handles:
            h.remove()
    timings[WHOLE_REST] = max(0., total - sum(timings.values()))
    timings['total'] = total
    return timings, layout


def run_whole_benchmark(tasks=tuple(WHOLE_MODELS), threads=None, repeat=5, min_seconds=1.0,
                        memory=True, log=print):
    """Time (and measure the memory of) every whole model against its ConvNeXt-T twin, one
    image at a time through the library's inference API, interleaved in one process."""
    threads = int(threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    bad = [t for t in tasks if t not in WHOLE_MODELS]
    if bad:
        raise ValueError(f'whole models: unknown {bad}; choose from {list(WHOLE_MODELS)}')
    results = []
    for task in tasks:
        image = make_image(task)
        runners = {b: whole_runner(task, build_whole_model(task, b), image)
                   for b in WHOLE_BACKBONES}
        load_before = os.getloadavg()
        timing = time_interleaved(runners, 1, repeat, min_seconds)
        load_after = os.getloadavg()
        w = WHOLE_MODELS[task]
        rows = []
        for b in WHOLE_BACKBONES:
            row = dict(model=f'{task} {b}', engine='torch', setting=f'{w.width}x{w.height} b1',
                       threads=threads, load_before=load_before[0], load_after=load_after[0],
                       **timing[b])
            if memory:
                mem = measure_whole_memory(task, b, threads)
                row['inference_mib'] = mem['inference_bytes'] / 2**20
                row['total_mib'] = mem['total_bytes'] / 2**20
            rows.append(row)
        results += rows
        log(format_table(rows))
        del runners
    return results


# ------------------------------------------------------------------------------------
# Where the time goes
# ------------------------------------------------------------------------------------
_OP_KINDS = {
    'aten::linear': 'Linear', 'aten::addmm': 'Linear', 'aten::mm': 'Linear',
    'aten::matmul': 'Linear', 'mkldnn::_linear_pointwise': 'Linear',  # mmdccnext/ops/linear.py
    'aten::layer_norm': 'LayerNorm',
    'aten::native_layer_norm': 'LayerNorm', 'aten::gelu': 'GELU', 'aten::gelu_': 'GELU',
    'aten::batch_norm': 'BatchNorm', 'aten::relu': 'ReLU', 'aten::relu_': 'ReLU',
    # DCConv's torch.library ops (mmdccnext/ops/library.py) are profiler events of their own
    'mmdccnext::cluster': 'DCConv clustering', 'mmdccnext::aggregate': 'DCConv aggregation',
    # backward (the training benchmark)
    'aten::gelu_backward': 'GELU', 'aten::native_layer_norm_backward': 'LayerNorm',
    'mmdccnext::aggregate_backward': 'DCConv aggregation',
    # the Conv-FFN's convolution (mmdccnext/ops/depthwise.py): profiler ranges of their own
    'mmdccnext::depthwise3x3_forward': 'depthwise conv 3x3',
    'mmdccnext::depthwise3x3_backward': 'depthwise conv 3x3',
    'mmdccnext::depthwise_weight_grad': 'depthwise conv 7x7',  # the mixers' (K = 7 only)
}
_CONV_OPS = ('aten::conv2d', 'aten::convolution', 'aten::_convolution',
             'aten::mkldnn_convolution', 'aten::convolution_backward')
ELEMENTWISE = 'element-wise and layout'
UNACCOUNTED = 'not in an op (Python, dispatch)'


def _kind(event):
    shapes = event.input_shapes
    # (out, X, W, ...): out += conv(X); (grad_out, X, W, ...)
    if event.name in ('mkldnn::_convolution_pointwise_', 'aten::convolution_backward'):
        shapes = shapes[1:]
    if event.name in _CONV_OPS or event.name.startswith('mkldnn::_convolution_pointwise'):
        if len(shapes) > 1 and len(shapes[0]) == 4 and len(shapes[1]) == 4:
            (_, c_in, *_), (c_out, per_group, k, _) = shapes[0], shapes[1]
            if per_group == 1 and c_out == c_in:
                return f'depthwise conv {k}x{k}'
        return 'dense conv'
    return _OP_KINDS.get(event.name, ELEMENTWISE)


def time_breakdown(model, x):
    """Milliseconds of one eager forward pass by kind of operation (``torch.profiler``).

    Every operation called from Python (and DCConv's clustering and aggregation) is
    assigned to a kind: Linear, LayerNorm, depthwise conv kxk, dense conv, GELU, DCConv
    clustering / aggregation, BatchNorm, ReLU, or element-wise and layout (residual
    additions, layer scale, copies, pooling). ``total`` is the wall time of the profiled
    pass; what no operation accounts for is Python and dispatch overhead.
    """
    from torch.profiler import ProfilerActivity, profile
    with torch.inference_mode():
        model(x)  # warm-up
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            t0 = time.perf_counter()
            model(x)
            total = (time.perf_counter() - t0) * 1e3
    spent = {}
    for event in prof.events():
        # called from Python (children are part of it); the backbone's fast-path range is
        # only a frame around the operations of its pass
        parent = event.cpu_parent
        if event.name != PROFILER_RANGE and (parent is None or parent.name == PROFILER_RANGE):
            kind = _kind(event)
            spent[kind] = spent.get(kind, 0.) + event.cpu_time_total / 1e3
    out = OrderedDict(sorted(spent.items(), key=lambda kv: -kv[1]))
    out[UNACCOUNTED] = max(0., total - sum(spent.values()))
    out['total'] = total
    return out


# ------------------------------------------------------------------------------------
# The whole benchmark
# ------------------------------------------------------------------------------------
def run_benchmark(models=MODEL_NAMES, settings=tuple(SETTINGS), engines=ENGINES, threads=None,
                  repeat=5, min_seconds=1.0, memory=True, work_dir='work_dirs/benchmark_inference',
                  log=print):
    """Time (and measure the memory of) every model in every setting and engine.

    Returns a list of result dicts (model, engine, setting, median_ips, ips, ratio,
    inference_mib, total_mib) and logs progress through ``log``.
    """
    threads = int(threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise ValueError(f'models: unknown {unknown}; choose from {list(MODEL_NAMES)}')
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        raise ValueError(f'settings: unknown {bad}; choose from {list(SETTINGS)}')
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        raise ValueError(f'engines: unknown {bad}; choose from {list(ENGINES)}')
    os.makedirs(work_dir, exist_ok=True)
    results = []
    for setting_name in settings:
        setting = SETTINGS[setting_name]
        x = make_input(setting)
        built = {m: build_backbone(m, setting.dense) for m in models}
        for engine in engines:
            if engine == 'torch':
                runners = {m: torch_runner(built[m], x) for m in models}
            elif engine == 'compile':  # torch.compile (inductor), timed beside eager
                runners = {m: torch_runner(torch.compile(built[m]), x) for m in models}
                runners.update({f'{m} (eager)': torch_runner(built[m], x) for m in models})
            else:
                files = {m: export_for_benchmark(m, setting, work_dir, built[m]) for m in models}
                runners = {m: ort_runner(files[m], x, threads) for m in models}
            load_before = os.getloadavg()
            timing = time_interleaved(runners, setting.batch, repeat, min_seconds)
            load_after = os.getloadavg()
            for m in models:
                row = dict(model=m, engine=engine, setting=setting_name, threads=threads,
                           load_before=load_before[0], load_after=load_after[0], **timing[m])
                if engine == 'compile':
                    row['vs_eager'] = statistics.median(
                        a / b for a, b in zip(timing[m]['ips'], timing[f'{m} (eager)']['ips']))
                elif memory:
                    mem = measure_memory(m, engine, setting, threads,
                                         onnx_file(work_dir, m, setting)
                                         if engine == 'ort' else None)
                    row['inference_mib'] = mem['inference_bytes'] / 2**20
                    row['total_mib'] = mem['total_bytes'] / 2**20
                results.append(row)
            log(format_table([r for r in results if r['setting'] == setting_name
                              and r['engine'] == engine]))
            del runners
    return results


def format_table(rows):
    """Markdown table of result rows."""
    lines = ['| setting | engine | model | images/s (median) | vs ConvNeXt-T (median ratio) '
             '| CPU time, vs ConvNeXt-T | model + inference MiB | inference MiB | load (1 min) |',
             '|---|---|---|---|---|---|---|---|---|']
    if any('vs_eager' in r for r in rows):  # torch.compile: also the ratio to eager
        lines = [lines[0].replace(' | load', ' | compiled vs eager | load'),
                 lines[1] + '---|']
    for r in rows:
        ratio = f'{r["ratio"]:.2f}x' if r.get('ratio') is not None else 'n/a'
        cpu_ratio = f'{r["cpu_ratio"]:.2f}x' if r.get('cpu_ratio') is not None else 'n/a'
        total = f'{r["total_mib"]:.0f}' if 'total_mib' in r else '-'
        inference = f'{r["inference_mib"]:.0f}' if 'inference_mib' in r else '-'
        lines.append(f'| {r["setting"]} | {r["engine"]} | {r["model"]} | '
                     f'{r["median_ips"]:.2f} | {ratio} | {cpu_ratio} | {total} | {inference} | '
                     + (f'{r["vs_eager"]:.2f}x | ' if 'vs_eager' in r else '') +
                     f'{r["load_before"]:.1f} -> {r["load_after"]:.1f} |')
    return '\n'.join(lines)

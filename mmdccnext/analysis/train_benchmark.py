"""Training-step speed of DCCNeXt backbones next to MMPretrain's ConvNeXt-T, eager and under
``torch.compile``, on the CPU.

A *step* is what a training iteration does to the backbone: ``zero_grad``, a forward pass in
training mode, a scalar loss (the mean of every output, in float32) and its backward pass.
The models are built from their registries exactly as the inference benchmark builds them
(:func:`mmdccnext.analysis.inference_benchmark.backbone_cfg`: the classification backbone
for 224 x 224, the four stage maps for 1280 x 800), with random weights, and time the same
input in the same process. Each *round* times every variant once, in an order that rotates
from round to round (:func:`~mmdccnext.analysis.inference_benchmark.time_interleaved`);
ratios are medians of the per-round ratios.

``compiled`` is ``torch.compile(model)`` with the default (inductor) backend; its compile
time is excluded (the warm-up step compiles, and is reported separately).
"""
import os
import statistics
import time
from collections import OrderedDict, namedtuple

import torch

from .inference_benchmark import ELEMENTWISE, _kind, backbone_cfg, time_interleaved

TrainSetting = namedtuple('TrainSetting', 'name batch height width dense')

TRAIN_SETTINGS = OrderedDict(
    (s.name, s) for s in (TrainSetting('224x224 b16', 16, 224, 224, False),
                          TrainSetting('1280x800 b1', 1, 800, 1280, True)))
TRAIN_MODELS = ('DCCNeXt-B0', 'DCCNeXt-B1', 'DCCNeXt-B2', 'ConvNeXt-T')
MODES = ('eager', 'compiled')
REFERENCE = 'ConvNeXt-T eager'


def build_train_model(name, dense):
    """The backbone ``name`` from its registry, in training mode."""
    import mmpretrain.models  # noqa: F401  (registers mmpretrain's models)

    from mmdccnext.registry import MODELS
    model = MODELS.build(backbone_cfg(name, dense))
    model.train()
    return model


def make_batch(setting, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(setting.batch, 3, setting.height, setting.width, generator=gen)


def train_step(model, x):
    """One training step of the backbone (module docstring); returns the loss."""
    for p in model.parameters():
        p.grad = None
    loss = sum(out.float().mean() for out in model(x))
    loss.backward()
    return loss.detach()


def step_runner(model, x, mode):
    """A callable running one step of ``model`` (``mode``: 'eager' or 'compiled')."""
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    forward = torch.compile(model) if mode == 'compiled' else model

    def run():
        for p in model.parameters():
            p.grad = None
        loss = sum(out.float().mean() for out in forward(x))
        loss.backward()

    return run


def pair_ratio(timing, name, reference):
    """Median over the rounds of ``name``'s images/s over ``reference``'s."""
    return statistics.median(
        a / b for a, b in zip(timing[name]['ips'], timing[reference]['ips']))


def run_train_benchmark(models=('DCCNeXt-B2', 'ConvNeXt-T'), settings=('224x224 b16', ),
                        modes=('eager', ), threads=None, repeat=5, min_seconds=1.0, log=print):
    """Time a training step of every model in every setting and mode, interleaved.

    Returns a list of rows (model, mode, setting, median_ips, ratio to ConvNeXt-T eager,
    ratio to the same model eager, compile_s)."""
    threads = int(threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    checks = ((models, TRAIN_MODELS, 'models'), (settings, TRAIN_SETTINGS, 'settings'),
              (modes, MODES, 'modes'))
    for given, known, what in checks:
        bad = [g for g in given if g not in known]
        if bad:
            raise ValueError(f'{what}: unknown {bad}; choose from {list(known)}')
    rows = []
    for setting_name in settings:
        setting = TRAIN_SETTINGS[setting_name]
        x = make_batch(setting)
        runners, compile_s = OrderedDict(), {}
        for name in models:
            torch.manual_seed(0)
            model = build_train_model(name, setting.dense)
            for mode in modes:
                run = step_runner(model, x, mode)
                t0 = time.perf_counter()
                run()  # the compiled variant compiles here
                compile_s[f'{name} {mode}'] = time.perf_counter() - t0
                runners[f'{name} {mode}'] = run
        load_before = os.getloadavg()[0]
        timing = time_interleaved(runners, setting.batch, repeat, min_seconds,
                                  reference=REFERENCE)
        load_after = os.getloadavg()[0]
        for key, result in timing.items():
            name, mode = key.rsplit(' ', 1)
            eager = f'{name} eager'
            rows.append(dict(
                model=name, mode=mode, setting=setting_name, threads=threads,
                median_ips=result['median_ips'], ips=result['ips'], ratio=result['ratio'],
                cpu_ratio=result['cpu_ratio'],
                vs_eager=pair_ratio(timing, key, eager) if eager in timing else None,
                first_step_s=compile_s[key], load_before=load_before, load_after=load_after))
        log(format_train_table([r for r in rows if r['setting'] == setting_name]))
    return rows


def format_train_table(rows):
    lines = ['| setting | model | mode | images/s (median) | vs ConvNeXt-T eager | CPU time, vs '
             'ConvNeXt-T eager | vs the same model eager | first step s | load (1 min) |',
             '|---|---|---|---|---|---|---|---|---|']

    def fmt(v):
        return 'n/a' if v is None else f'{v:.2f}x'

    for r in rows:
        lines.append(f'| {r["setting"]} | {r["model"]} | {r["mode"]} | {r["median_ips"]:.2f} | '
                     f'{fmt(r["ratio"])} | {fmt(r["cpu_ratio"])} | {fmt(r["vs_eager"])} | '
                     f'{r["first_step_s"]:.1f} | {r["load_before"]:.1f} -> '
                     f'{r["load_after"]:.1f} |')
    return '\n'.join(lines)


def train_breakdown(model, x, mode='eager'):
    """Milliseconds of one training step by kind of operation: the self time of every
    profiler event (forward and backward) summed by kind (Linear, LayerNorm, depthwise conv
    kxk, dense conv, GELU, DCConv clustering / aggregation, element-wise and layout), and
    ``total``, the wall time of the profiled step. Under ``compiled``, inductor's generated
    kernels count as element-wise."""
    from torch.profiler import ProfilerActivity, profile
    run = step_runner(model, x, mode)
    run()  # warm-up (and compile)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        run()
        total = (time.perf_counter() - t0) * 1e3
    spent = {}
    for event in prof.events():
        kind = _kind(event)
        spent[kind] = spent.get(kind, 0.) + event.self_cpu_time_total / 1e3
    out = OrderedDict(sorted(spent.items(), key=lambda kv: -kv[1]))
    out.setdefault(ELEMENTWISE, 0.)
    out['total'] = total
    return out

"""``python -m mmdccnext.utils.collect_env`` and ``tools/misc/collect_env.py``: they run
without CUDA and without the C++ extension, and say plainly what runs there."""
import os
import os.path as osp
import re
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# every run hides the GPUs (so a GPU machine tests the CPU-only report too)
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES='')
for variable in ('MMDCCNEXT_DCCONV_IMPL', 'MMDCCNEXT_CPU_ISA', 'TRITON_INTERPRET'):
    ENV.pop(variable, None)
AUTO = "DCConv on cpu, impl='auto' runs"
HIDE_EXTENSION = 'import sys; sys.modules["mmdccnext._ext"] = None; '


def report(code=None, args=()):
    """``{field: value}`` of the report printed by ``python -m mmdccnext.utils.collect_env``
    (or by ``python -c code``)."""
    cmd = [sys.executable] + (['-c', code] if code else ['-m', 'mmdccnext.utils.collect_env'])
    proc = subprocess.run(cmd + list(args), cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fields = {}
    for line in proc.stdout.splitlines():
        name, sep, value = line.partition(': ')
        if sep:
            fields[name] = value
    return fields, proc.stdout


def test_versions_cpu_and_paths_without_cuda():
    import torch

    import mmdccnext
    from mmdccnext.ops import cpu_impl
    fields, out = report()
    assert fields['CUDA available'] == 'False'
    assert fields['PyTorch'] == torch.__version__
    assert fields['PyTorch CUDA'] == (torch.version.cuda or 'none (a CPU-only build of PyTorch)')
    for name in ('Python', 'Triton', 'MMEngine', 'MMCV', 'MMCV ops', 'MMDetection',
                 'MMSegmentation', 'MMPretrain', 'ONNX Runtime', 'CPU', 'DCConv C++ kernels'):
        assert fields.get(name), f'{name} missing:\n{out}'
    assert fields['mmdccnext'].startswith(mmdccnext.__version__)
    assert 'PyTorch compiling details' not in fields  # only with --full
    assert not any(name.startswith('DCConv on cuda') for name in fields), out
    assert fields['DCConv on cpu, pytorch'].startswith('available')
    assert fields['DCConv on cpu, triton'].startswith('not available: ')
    if cpu_impl.ext_available():
        isa = cpu_impl.cpu_isa()
        assert fields['DCConv C++ kernels'] == f'the {isa} copy (the best this CPU runs)'
        assert fields['DCConv on cpu, cpu'] == f'available, the {isa} kernels'
        assert fields[AUTO] == 'cpu'
    else:
        assert fields[AUTO] == 'pytorch'


def test_without_the_extension():
    fields, out = report(HIDE_EXTENSION + 'import runpy; '
                         'runpy.run_module("mmdccnext.utils.collect_env", run_name="__main__")')
    assert fields['DCConv C++ kernels'].startswith('not built or not loadable'), out
    assert 'DCConv on the CPU runs the PyTorch path' in fields['DCConv C++ kernels']
    assert fields['DCConv on cpu, cpu'].startswith('not available: '), out
    assert fields[AUTO] == 'pytorch'
    assert 'warn' not in out.lower()  # the fallback is reported, not warned about


def test_tool_script_and_full(tmp_path):
    tool = osp.join(REPO, 'tools', 'misc', 'collect_env.py')
    proc = subprocess.run([sys.executable, tool, '--full'], cwd=str(tmp_path), env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r'^PyTorch compiling details: ', proc.stdout, re.M)
    assert re.search(r"^DCConv on cpu, impl='auto' runs: (cpu|pytorch)$", proc.stdout, re.M)


def test_bad_settings_are_reported_not_raised(monkeypatch):
    import torch

    from mmdccnext.utils.collect_env import dcconv_paths
    monkeypatch.setenv('MMDCCNEXT_DCCONV_IMPL', 'nonsense')
    paths = dcconv_paths(torch.device('cpu'))
    assert paths['auto'].startswith('fails: ValueError'), paths['auto']
    assert 'MMDCCNEXT_DCCONV_IMPL=nonsense' in paths['auto']

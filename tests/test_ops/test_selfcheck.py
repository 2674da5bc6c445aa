"""The self-check of the Triton path (mmdccnext/ops/selfcheck.py) and the choice it feeds.

``selfcheck_checks.py`` runs in a fresh Python with ``TRITON_INTERPRET=1`` (the variable must
be set before ``triton.jit`` decorates the kernels), once for the module, with CPU tensors
standing in for the Triton device (the seam ``dcconv.AUTO_TRITON_DEVICES``); each test below
asserts on one of its checks: a correct kernel is chosen (one log line), a kernel that
raises, one returning a wrong index and one whose gradient is off each send ``'auto'`` to the
PyTorch path with one warning naming what failed and make ``impl='triton'`` raise with it; the
choice is made once per process, device and compute dtype; ``MMDCCNEXT_DCCONV_SELFCHECK=0``
skips it (said once); no torch.distributed collective; no graph break under torch.compile.
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip('triton', reason='triton is not importable (it comes with torch on Linux)')

from selfcheck_checks import CHECKS  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


@pytest.fixture(scope='module')
def interpreted():
    env = dict(os.environ, TRITON_INTERPRET='1')
    env['PYTHONPATH'] = os.pathsep.join([ROOT] +
                                        ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    proc = subprocess.run([sys.executable, os.path.join(HERE, 'selfcheck_checks.py')],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f'the self-check checks crashed:\n{proc.stderr[-4000:]}'
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('name', list(CHECKS))
def test_selfcheck(interpreted, name):
    result = interpreted[name]
    assert result['ok'], result['detail']


def test_env_variable_values(monkeypatch):
    from mmdccnext.ops import selfcheck
    for value, enabled in (('0', False), ('off', False), ('1', True), ('', True)):
        monkeypatch.setenv(selfcheck.ENV_SELFCHECK, value)
        assert selfcheck.enabled() is enabled, value
    monkeypatch.delenv(selfcheck.ENV_SELFCHECK)
    assert selfcheck.enabled()

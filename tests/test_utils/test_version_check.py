import subprocess
import sys

import pytest

from mmdccnext.utils import check_mmcv


@pytest.mark.parametrize('version', ['1.7.1', '2.2.0', '2.0.0rc3'])
def test_out_of_range_mmcv_gives_one_clear_message(version):
    with pytest.raises(ImportError) as info:
        check_mmcv(version=version, has_ops=True)
    message = str(info.value)
    assert f'found mmcv {version}' in message
    assert 'mmcv>=2.0.0rc4,<2.2.0' in message
    assert 'make env' in message and 'mim install' in message


@pytest.mark.parametrize('version', ['2.0.0rc4', '2.0.1', '2.1.0'])
def test_supported_mmcv_passes(version):
    check_mmcv(version=version, has_ops=True)


def test_mmcv_without_ops_is_named():
    with pytest.raises(ImportError, match=r'mmcv\._ext'):
        check_mmcv(version='2.1.0', has_ops=False)


def test_import_with_wrong_mmcv_fails_at_mmdccnext_not_deep_inside():
    """Simulate an installed mmcv 2.2.0: ``import mmdccnext`` stops with our message."""
    code = ('import mmcv; mmcv.__version__ = "2.2.0"\n'
            'import mmdccnext\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith('ImportError: mmdccnext needs mmcv>=2.0.0rc4,<2.2.0')
    assert 'found mmcv 2.2.0' in last_line
    # The traceback ends in our check, not in mmdet/mmseg internals.
    assert 'mmdet' not in proc.stderr and 'mmseg' not in proc.stderr

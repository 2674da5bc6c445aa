"""tools/model_converters/publish_model.py, tools/download_checkpoint.py, and mim.

The mim test builds a wheel from a copy of the repository (without the C++ extension, to stay
quick), installs it into a folder of its own and runs the real ``mim download`` and
``mim train`` against that installed package, as a user of ``pip install mmdccnext`` would.
"""
import importlib.util
import os
import os.path as osp
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'tests', 'test_apis'))
import zoo_helpers  # noqa: E402
from zoo_helpers import TinyClassifier, outputs, write_index  # noqa: E402

import mmdccnext  # noqa: E402,F401
from mmdccnext.apis import publish_checkpoint  # noqa: E402
from mmdccnext.apis.zoo import INDEX_ENV  # noqa: E402
from mmdccnext.utils import load_checkpoint_file  # noqa: E402

# the fixtures of tests/test_apis (its conftest.py is not seen from here)
published = zoo_helpers.published
torch_home = zoo_helpers.torch_home
zoo_server = zoo_helpers.zoo_server


def load_tool(relpath):
    spec = importlib.util.spec_from_file_location(osp.basename(relpath)[:-3],
                                                  osp.join(REPO, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_publish_tool_strips_names_and_prints_snippet(tmp_path, published, capsys):
    tool = load_tool('tools/model_converters/publish_model.py')
    tool.main([published.training_checkpoint, str(tmp_path / 'rel' / 'tiny-dccnext_in1k.pth'),
               '--date', '20250102', '--base-url', 'https://example.org/zoo/'])
    out = capsys.readouterr().out
    [path] = list((tmp_path / 'rel').iterdir())
    sha256 = published.result.sha256  # same content as the fixture's publication
    assert path.name == f'tiny-dccnext_in1k_20250102-{sha256[:8]}.pth'
    assert 'left out: message_hub, optimizer, param_schedulers' in out
    assert f'    Weights: https://example.org/zoo/{path.name}\n' in out
    assert f'    Weights SHA256: {sha256}' in out

    # only weights and plain meta data: loads with nothing allow-listed
    release = torch.load(path, weights_only=True)
    assert sorted(release) == ['meta', 'state_dict']
    training = load_checkpoint_file(published.training_checkpoint)
    assert release['state_dict'].keys() == training['state_dict'].keys()
    for key, value in training['state_dict'].items():
        assert torch.equal(release['state_dict'][key], value)
    assert release['meta']['iter'] == 1

    with pytest.raises(ValueError, match='out_file: expected a file name ending in .pth'):
        tool.main([published.training_checkpoint, str(tmp_path / 'x.ckpt')])
    with pytest.raises(ValueError, match='date: expected YYYYMMDD'):
        tool.main([published.training_checkpoint, str(tmp_path / 'x.pth'), '--date', '2025'])


@pytest.mark.slow
def test_download_tool(torch_home, tmp_path, monkeypatch, zoo_server, published,
                       capsys):
    url = zoo_server.add(f'/zoo/{published.file_name}', published.data)
    monkeypatch.setenv(INDEX_ENV, write_index(tmp_path / 'index', [
        dict(Name='tiny-dccnext_in1k', Config='configs/tiny/tiny.py', Weights=url),
        dict(Name='tiny-unreleased_in1k', Config='configs/tiny/unreleased.py')]))
    tool = load_tool('tools/download_checkpoint.py')

    tool.main(['--list'])
    listing = capsys.readouterr().out
    assert 'tiny-dccnext_in1k' in listing and url in listing
    assert 'tiny-unreleased_in1k' in listing and 'no weights released' in listing

    tool.main(['tiny-dccnext_in1k', '--no-progress'])
    path = capsys.readouterr().out.strip()
    assert path == str(torch_home / published.file_name)
    model = TinyClassifier()
    model.load_state_dict(torch.load(path, weights_only=True)['state_dict'])
    assert torch.equal(outputs(model), published.outputs)

    with pytest.raises(SystemExit, match='no checkpoint of tiny-unreleased_in1k has been '
                       'released yet'):
        tool.main(['tiny-unreleased_in1k'])
    # an unknown name is the user's input too: one message, no traceback, with the nearest
    # names, or all known ones when none is near
    with pytest.raises(SystemExit, match=r'^error: zoo://tiny-dccnext_in1: no model of that '
                       r'name in the model zoo; did you mean tiny-dccnext_in1k\? \(all 2: '):
        tool.main(['tiny-dccnext_in1'])
    with pytest.raises(SystemExit, match=r'^error: zoo://something-else: no model of that name '
                       r'in the model zoo; known names: tiny-dccnext_in1k, tiny-unreleased_in1k$'):
        tool.main(['something-else'])
    with pytest.raises(SystemExit):
        tool.main([])
    assert 'give a zoo name, config or URL, or --list' in capsys.readouterr().err


@pytest.fixture(scope='module')
def installed_wheel(tmp_path_factory):
    """mmdccnext built as a wheel from a copy of the repository and installed into a folder."""
    root = tmp_path_factory.mktemp('wheel')
    src = root / 'src'
    src.mkdir()
    ignore = shutil.ignore_patterns('__pycache__', '*.so', '.mim', '*.egg-info')
    for name in ('setup.py', 'setup.cfg', 'pyproject.toml', 'MANIFEST.in', 'README.md',
                 'model-index.yml'):
        shutil.copy(osp.join(REPO, name), src / name)
    for name in ('mmdccnext', 'configs', 'tools', 'requirements'):
        shutil.copytree(osp.join(REPO, name), src / name, ignore=ignore)
    env = dict(os.environ, MMDCCNEXT_WITH_EXT='0')
    pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '-q']
    subprocess.run([*pip, 'wheel', '--no-build-isolation', '--no-deps', '-w', str(root / 'dist'),
                    str(src)], check=True, env=env, cwd=root, capture_output=True)
    [wheel] = list((root / 'dist').glob('mmdccnext-*.whl'))
    site = root / 'site'
    subprocess.run([*pip, 'install', '--no-deps', '--target', str(site), str(wheel)],
                   check=True, capture_output=True)
    # the C++ kernels this environment built (the wheel skipped them to build in seconds)
    for extension in (osp.join(REPO, 'mmdccnext', f) for f in os.listdir(
            osp.join(REPO, 'mmdccnext')) if f.startswith('_ext') and f.endswith('.so')):
        shutil.copy(extension, site / 'mmdccnext')
    return wheel, site


@pytest.mark.slow
def test_wheel_carries_configs_tools_and_index_in_mim_folder(installed_wheel):
    wheel, site = installed_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {'mmdccnext/.mim/model-index.yml', 'mmdccnext/.mim/tools/train.py',
                'mmdccnext/.mim/tools/test.py', 'mmdccnext/.mim/tools/download_checkpoint.py',
                'mmdccnext/.mim/tools/model_converters/publish_model.py'}
    for path in os.listdir(osp.join(REPO, 'configs')):
        for config in os.listdir(osp.join(REPO, 'configs', path)):
            expected.add(f'mmdccnext/.mim/configs/{path}/{config}')
    assert expected <= names, sorted(expected - names)
    assert not any('__pycache__' in n for n in names)


def run(args, site, cwd, **env):
    env = dict(os.environ, PYTHONPATH=str(site), **env)
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture
def b0_release(tmp_path):
    """A published checkpoint of the model of dccnext-b0_synthetic.py (random weights)."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'classification', 'dccnext-b0_synthetic.py'))
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save(dict(state_dict=model.state_dict()), tmp_path / 'b0.pth')
    release = publish_checkpoint(tmp_path / 'b0.pth', str(tmp_path / 'dccnext-b0_8xb128_in1k.pth'))
    with open(release.path, 'rb') as f:
        return osp.basename(release.path), f.read()


@pytest.mark.slow
def test_installed_package_serves_mim_and_its_own_zoo(installed_wheel, tmp_path, zoo_server,
                                                      b0_release):
    _, site = installed_wheel
    mim = [sys.executable, '-m', 'mim']
    # release weights for one entry of the installed index, served by the local server
    file_name, data = b0_release
    url = zoo_server.add(f'/zoo/{file_name}', data)
    metafile = site / 'mmdccnext' / '.mim' / 'configs' / 'classification' / 'metafile.yml'
    config_line = '    Config: configs/classification/dccnext-b0_8xb128_in1k.py\n'
    text = metafile.read_text()
    assert config_line in text
    metafile.write_text(text.replace(config_line, f'{config_line}    Weights: {url}\n'))

    # mim download: the checkpoint and the config of that entry
    dest = tmp_path / 'mim_download'
    run([*mim, 'download', 'mmdccnext', '--config', 'dccnext-b0_8xb128_in1k', '--dest',
         str(dest)], site, tmp_path)
    assert (dest / file_name).read_bytes() == data
    assert "arch='b0'" in (dest / 'dccnext-b0_8xb128_in1k.py').read_text()

    # mim train: finds the config and tools/train.py in the package; load_from by zoo name
    # resolves through the installed package's index (the source tree's has no Weights) and
    # the verified download
    from mmdccnext.datasets import generate
    data_root = str(tmp_path / 'imagenet')
    generate('imagenet', data_root, seed=0, num_train=4, num_val=4, image_size=(64, 64))
    work = tmp_path / 'mim_train'
    options = [f'{loader}.{key}' for loader in ('train_dataloader', 'val_dataloader',
                                                'test_dataloader')
               for key in (f'dataset.data_root={data_root}', 'num_workers=0',
                           'persistent_workers=False', 'batch_size=4')]
    out = run([*mim, 'train', 'mmdccnext', 'dccnext-b0_synthetic.py', '--work-dir', str(work),
               '--cfg-options', *options, 'train_cfg.max_epochs=1', 'train_cfg.val_interval=2',
               'load_from=zoo://dccnext-b0_8xb128_in1k'],
              site, tmp_path, TORCH_HOME=str(tmp_path / 'torch_home'))
    assert f'{site}/mmdccnext/.mim/configs/classification/dccnext-b0_synthetic.py' in out
    assert f'{site}/mmdccnext/.mim/tools/train.py' in out
    assert 'Load checkpoint from zoo://dccnext-b0_8xb128_in1k' in out
    assert 'do not match exactly' not in out
    cached = tmp_path / 'torch_home' / 'hub' / 'checkpoints' / file_name
    assert cached.read_bytes() == data
    assert (work / 'epoch_1.pth').is_file()

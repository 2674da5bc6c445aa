"""A model index of one's own (``MMDCCNEXT_MODEL_INDEX``) in any valid layout: ``import
mmdccnext`` works, the zoo and its tools find the names, MMPretrain's ModelHub gets the
classifiers, and an index that does not read costs one warning, never the import.

Downloads go to a real HTTP server on 127.0.0.1 (``zoo_server``)."""
import hashlib
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
import yaml

from mmdccnext.apis.model_index import is_classification, read_model_index
from mmdccnext.apis.zoo import INDEX_ENV, load_model_index

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def write(path, content):
    os.makedirs(osp.dirname(str(path)), exist_ok=True)
    with open(path, 'w') as f:
        if str(path).endswith('.json'):
            json.dump(content, f)
        else:
            yaml.safe_dump(content, f)
    return str(path)


def classifier(name, **fields):
    return dict(Name=name, Config=f'configs/mine/{name}.py',
                Results=[dict(Task='Image Classification', Dataset='X',
                              Metrics={'Top 1 Accuracy': 1.0})], **fields)


def detector(name, **fields):
    return dict(Name=name, Config=f'configs/det/{name}.py',
                Results=[dict(Task='Object Detection', Dataset='COCO',
                              Metrics={'box AP': 1.0})], **fields)


@pytest.fixture
def served(zoo_server, tmp_path):
    """A small checkpoint served as ``/w/mine_20250101-<sha256[:8]>.pth``; its URL."""
    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {'w': torch.arange(4.)}}, path)
    data = path.read_bytes()
    name = f'mine_20250101-{hashlib.sha256(data).hexdigest()[:8]}.pth'
    return zoo_server.add(f'/w/{name}', data)


def inline_index(root, url):
    return write(root / 'model-index.yml', dict(Models=[
        classifier('mine-inline_in1k', Weights=url),
        detector('mine-inline_det')]))


def imports_elsewhere_index(root, url):
    """The index imports a file in another folder, which imports (relative to itself) a
    JSON file, a wildcard, and holds a Models item that is a file path."""
    write(root / 'zoo' / 'more' / 'b.json', dict(Models=[detector('mine-json_det')]))
    write(root / 'zoo' / 'more' / 'c1.yml', dict(Models=[classifier('mine-wild1_in1k')]))
    write(root / 'zoo' / 'more' / 'c2.yml', dict(Models=[classifier('mine-wild2_in1k')]))
    write(root / 'zoo' / 'one.yml', classifier('mine-file_in1k'))
    write(root / 'zoo' / 'meta.yml', dict(Import=['more/b.json', 'more/c*.yml'], models=[
        classifier('mine-imported_in1k', Weights=url), 'one.yml']))
    return write(root / 'index' / 'model-index.yml', dict(Import=['../zoo/meta.yml']))


LAYOUTS = {
    'inline': (inline_index, 'mine-inline_in1k', ['mine-inline_in1k', 'mine-inline_det']),
    'imports elsewhere': (imports_elsewhere_index, 'mine-imported_in1k', [
        'mine-imported_in1k', 'mine-file_in1k', 'mine-json_det', 'mine-wild1_in1k',
        'mine-wild2_in1k'])
}


@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_reader_finds_every_model(tmp_path, layout):
    make, _, names = LAYOUTS[layout]
    index = make(tmp_path, 'http://127.0.0.1:9/x.pth')
    assert [e['Name'] for e, _ in read_model_index(index)] == names
    assert list(load_model_index(index)) == names


def run_fresh(code, index):
    """``python -c code`` with the zoo's index ``index`` (and the tests' TORCH_HOME)."""
    env = dict(os.environ, **{INDEX_ENV: index})
    env.pop('MMDCCNEXT_MODEL_ZOO_MIRROR', None)
    return subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_import_and_download_by_name(tmp_path, torch_home, served, layout):
    make, name, names = LAYOUTS[layout]
    index = make(tmp_path, served)
    code = ('import warnings\n'
            'with warnings.catch_warnings(record=True) as caught:\n'
            '    warnings.simplefilter("always")\n'
            '    import mmdccnext\n'
            'print("WARNINGS", [str(w.message) for w in caught if "mmdccnext" in str(w.message)])\n'
            'from mmdccnext.apis import fetch_checkpoint\n'
            f'print("PATH", fetch_checkpoint({name!r}, progress=False))\n'
            'import mmpretrain\n'
            'print("HUB", sorted(mmpretrain.list_models("mine")))\n')
    proc = run_fresh(code, index)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(' ', 1) for line in proc.stdout.splitlines() if ' ' in line)
    assert lines['WARNINGS'] == '[]'
    path = lines['PATH']
    assert osp.dirname(path) == str(torch_home) and osp.basename(path) == osp.basename(served)
    classifiers = sorted(n for n in names if n.endswith('_in1k'))
    assert lines['HUB'] == repr(classifiers)  # the detectors are not MMPretrain's
    # the zoo's tool finds the name too (its own fresh interpreter)
    tool = run_fresh('import runpy, sys; sys.argv = ["download_checkpoint.py", "--list"]; '
                     'runpy.run_path("tools/download_checkpoint.py", run_name="__main__")',
                     index)
    assert tool.returncode == 0, tool.stderr[-3000:]
    assert sorted(line.split()[0] for line in tool.stdout.splitlines()) == sorted(names)


def test_an_index_that_does_not_read_costs_one_warning(tmp_path, torch_home):
    index = write(tmp_path / 'model-index.yml', dict(Import=['missing/metafile.yml']))
    code = ('import warnings\n'
            'with warnings.catch_warnings(record=True) as caught:\n'
            '    warnings.simplefilter("always")\n'
            '    import mmdccnext\n'
            '    from mmdccnext.ops import dcconv\n'
            'for w in caught:\n'
            '    if "mmdccnext" in str(w.message): print("WARNING", w.message)\n')
    proc = run_fresh(code, index)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warned = [line for line in proc.stdout.splitlines() if line.startswith('WARNING')]
    assert len(warned) == 1, proc.stdout
    assert "MMPretrain's ModelHub" in warned[0]
    assert 'imports missing/metafile.yml, which does not exist' in warned[0]


def test_classification_is_the_task_or_the_folder():
    assert is_classification(classifier('a'))
    assert not is_classification(detector('b'))
    assert is_classification(dict(Name='c', Config='configs/classification/c.py'))
    assert not is_classification(dict(Name='d', Config='configs/classification.py'))


def test_cycles_and_case_of_keys(tmp_path):
    write(tmp_path / 'a.yml', dict(IMPORT=['b.yml'], MODELS=[dict(Name='a', Config='a.py')]))
    write(tmp_path / 'b.yml', dict(Import=['a.yml'], Models=[dict(Name='b', Config='b.py')]))
    assert [e['Name'] for e, _ in read_model_index(str(tmp_path / 'a.yml'))] == ['a', 'b']
    write(tmp_path / 'c.txt', {})
    write(tmp_path / 'd.yml', dict(Import=['c.txt']))
    with pytest.raises(ValueError, match='c.txt: a model index file must be YAML'):
        read_model_index(str(tmp_path / 'd.yml'))


def test_every_import_time_integration_fails_soft(tmp_path, torch_home):
    # MMEngine's CheckpointLoader refuses schemes and MMPretrain's ModelHub is not what we know,
    # and the C++ extension is missing: the import goes on, one warning per skipped integration
    # (the extension is loaded on first use, and warned about then)
    code = ('import sys, warnings\n'
            'sys.modules["mmdccnext._ext"] = None\n'
            'from mmengine.runner.checkpoint import CheckpointLoader\n'
            'def refuse(*args, **kwargs):\n'
            '    raise RuntimeError("simulated: another MMEngine")\n'
            'CheckpointLoader.register_scheme = refuse\n'
            'from mmpretrain.apis import ModelHub\n'
            'ModelHub._models_dict = None\n'
            'with warnings.catch_warnings(record=True) as caught:\n'
            '    warnings.simplefilter("always")\n'
            '    import mmdccnext, torch\n'
            '    from mmdccnext.ops import DCConv\n'
            '    print("IMPORTED")\n'
            '    DCConv(8, 3)(torch.randn(1, 5, 8))\n'
            'for w in caught:\n'
            '    if "mmdccnext" in str(w.message): print("WARNING", w.message)\n')
    proc = run_fresh(code, osp.join(REPO, 'model-index.yml'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'IMPORTED' in proc.stdout
    warned = [line for line in proc.stdout.splitlines() if line.startswith('WARNING')]
    assert len(warned) == 4, warned
    for skipped in ("MMEngine's local checkpoint loader", 'the zoo:// scheme',
                    "MMPretrain's ModelHub", 'pure-PyTorch'):
        assert sum(skipped in line for line in warned) == 1, (skipped, warned)
    assert sum('simulated: another MMEngine' in line for line in warned) == 2

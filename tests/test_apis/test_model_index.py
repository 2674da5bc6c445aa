"""model-index.yml and the metafiles: complete, consistent, and what mim reads too.

Rule: every config under configs/ has exactly one entry, except ``*_synthetic.py`` configs
(the real configs on generated data, for `make demo` and the tests; not models of the zoo).
"""
import glob
import os.path as osp
import re

import pytest
import yaml
from mmengine.config import Config
from zoo_helpers import write_index

import mmdccnext  # noqa: F401
from mmdccnext.apis import load_model_index
from mmdccnext.apis.zoo import find_entry, lookup, model_index_file

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
INDEX = osp.join(REPO, 'model-index.yml')
NOT_IN_ZOO = '_synthetic.py'
PUBLISHED_NAME = re.compile(r'(?P<name>.+)_(?P<date>\d{8})-(?P<sha>[0-9a-f]{8})\.pth$')


def metafiles():
    return sorted(glob.glob(osp.join(REPO, 'configs', '*', 'metafile.yml')))


def raw_entries():
    """(metafile, collections, entry) straight from YAML, independent of the zoo's reader."""
    for metafile in metafiles():
        with open(metafile) as f:
            content = yaml.safe_load(f)
        collections = {c['Name'] for c in content.get('Collections', [])}
        for entry in content['Models']:
            yield metafile, collections, entry


def entry_problems(entry, collections, root):
    """What is wrong with one model entry (empty: nothing)."""
    problems = []
    config = entry.get('Config', '')
    if not config.startswith('configs/') or not osp.isfile(osp.join(root, config)):
        problems.append(f'Config {config!r} does not exist')
    if entry.get('In Collection') not in collections:
        problems.append(f'In Collection {entry.get("In Collection")!r} is not a collection')
    meta = entry.get('Metadata', {})
    for key in ('Parameters', 'FLOPs'):
        if not (isinstance(meta.get(key), int) and meta[key] > 0):
            problems.append(f'Metadata {key} must be a positive int, got {meta.get(key)!r}')
    if not meta.get('Training Data'):
        problems.append('Metadata needs Training Data')
    if not (meta.get('Epochs') or meta.get('Iterations')):
        problems.append('Metadata needs Epochs or Iterations')
    if entry.get('Results'):
        if not str(meta.get('Results Source', '')).startswith('paper (Table '):
            problems.append('Results must say where they come from (Results Source: paper ...)')
        for result in entry['Results']:
            if not (result.get('Task') and result.get('Dataset') and result.get('Metrics')):
                problems.append(f'incomplete result {result}')
    weights = entry.get('Weights')
    if weights is not None:
        match = PUBLISHED_NAME.match(osp.basename(weights))
        full = entry.get('Weights SHA256')
        if not weights.startswith(('http://', 'https://')):
            problems.append(f'Weights must be an http(s) URL, got {weights!r}')
        if not match and not (full and re.fullmatch('[0-9a-f]{64}', full)):
            problems.append('Weights need a <name>_<YYYYMMDD>-<sha256[:8]>.pth file name or '
                            'a Weights SHA256')
        if match and full and not full.startswith(match['sha']):
            problems.append('Weights SHA256 contradicts the hash in the file name')
    return problems


def test_index_imports_every_metafile():
    with open(INDEX) as f:
        imports = yaml.safe_load(f)['Import']
    assert sorted(osp.join(REPO, p) for p in imports) == metafiles()
    assert osp.realpath(model_index_file()) == osp.realpath(INDEX)  # the zoo's default


def test_names_unique_and_entries_complete():
    names = [entry['Name'] for _, _, entry in raw_entries()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    problems = {entry['Name']: entry_problems(entry, collections, REPO)
                for _, collections, entry in raw_entries()}
    assert {n: p for n, p in problems.items() if p} == {}
    assert sorted(load_model_index()) == sorted(names)


def test_every_config_has_exactly_one_entry():
    configs = sorted(osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'configs', '*',
                                                                      '*.py')))
    entries = [entry['Config'] for _, _, entry in raw_entries()]
    in_zoo = [c for c in configs if not c.endswith(NOT_IN_ZOO)]
    assert sorted(entries) == in_zoo
    assert any(c.endswith(NOT_IN_ZOO) for c in configs)  # the rule has something to exclude


def test_configs_find_their_entries():
    for name, entry in load_model_index().items():
        assert find_entry(osp.join(REPO, entry['Config']))['Name'] == name
        assert find_entry(osp.basename(entry['Config']))['Name'] == name


def test_aliases_are_their_targets_under_another_name():
    entries = load_model_index()
    aliases = {n: e for n, e in entries.items() if 'Alias Of' in e}
    assert sorted(aliases) == ['fpn_dccnext_b2', 'mask_rcnn_dccnext_b2', 'retinanet_dccnext_b2']
    for name, alias in aliases.items():
        target = entries[alias['Alias Of']]
        assert 'Alias Of' not in target
        for key in ('In Collection', 'Metadata', 'Results', 'Weights', 'Weights SHA256'):
            assert alias.get(key) == target.get(key), (name, key)
        assert (Config.fromfile(osp.join(REPO, alias['Config'])).to_dict()
                == Config.fromfile(osp.join(REPO, target['Config'])).to_dict())


def test_zoo_names_in_configs_resolve():
    used = set()
    for path in glob.glob(osp.join(REPO, 'configs', '*', '*.py')):
        with open(path) as f:
            used.update(re.findall(r"zoo://([\w.-]+)", f.read()))
    assert used  # the downstream configs do name their pretrained weights this way
    for name in used:
        assert lookup(name)['Config'].startswith('configs/classification/')


def test_no_weights_are_claimed_without_a_checkpoint():
    """None has been released; an entry gets Weights only with a published checkpoint."""
    assert [n for n, e in load_model_index().items() if e.get('Weights')] == []


def test_parameters_are_those_of_the_config():
    from mmdccnext.analysis import build_model_from_cfg
    entry = lookup('dccnext-b0_8xb128_in1k')
    model = build_model_from_cfg(Config.fromfile(osp.join(REPO, entry['Config'])))
    assert sum(p.numel() for p in model.parameters()) == entry['Metadata']['Parameters']


def test_mim_reads_the_same_index():
    import modelindex  # mim's reader; comes with openmim (requirements/tests.txt)
    index = modelindex.load(INDEX)
    assert sorted(m.name for m in index.models) == sorted(load_model_index())
    assert {c.name for c in index.collections} == {
        'DCCNeXt', 'DCCNeXt-Detection', 'DCCNeXt-Segmentation'}


def test_entry_checker_catches_mistakes(tmp_path):
    (tmp_path / 'configs').mkdir()
    (tmp_path / 'configs' / 'a.py').write_text('')
    good = dict(Name='a', Config='configs/a.py', **{'In Collection': 'C'},
                Metadata={'Parameters': 1, 'FLOPs': 2, 'Training Data': 'X', 'Epochs': 1})
    assert entry_problems(good, {'C'}, str(tmp_path)) == []
    bad = dict(good, Config='configs/b.py', Weights='http://h/a.pth', Results=[{'Task': 'T'}])
    found = ' | '.join(entry_problems(bad, {'C'}, str(tmp_path)))
    for expected in ('does not exist', 'Results Source', 'incomplete result', 'file name'):
        assert expected in found


def test_index_reader_names_duplicates_and_missing_metafiles(torch_home, tmp_path):
    index = write_index(tmp_path, [dict(Name='a', Config='x.py'), dict(Name='a', Config='y.py')])
    with pytest.raises(ValueError, match="model name 'a' is already used in"):
        load_model_index(index)
    with open(index, 'w') as f:
        yaml.safe_dump(dict(Import=['configs/none/metafile.yml']), f)
    with pytest.raises(FileNotFoundError, match='imports configs/none/metafile.yml, which does '
                       'not exist'):
        load_model_index(index)

"""One message for a config run without its data: every missing path, and how to get it.

MMEngine builds the data loaders one at a time and the evaluators later, so a config without
its data set would fail once per loader, each time with a traceback naming one path, and the
evaluator's annotation file only after that. :func:`check_data_roots` looks at every path the
given loaders and evaluators read before anything is built.
"""
import os.path as osp

DATA_HELP = {
    'mmdet': 'COCO 2017 (README, section "Data": data/coco/annotations/instances_*2017.json '
             'and data/coco/{train,val}2017/; MMDetection\'s dataset guide says how to '
             'download it)',
    'mmseg': 'ADE20K (README, section "Data": data/ade/ADEChallengeData2016/'
             '{images,annotations}/{training,validation}/; MMSegmentation\'s dataset guide says '
             'how to download it)',
    'mmpretrain': 'ImageNet-1K (README, section "Data": data/imagenet/{train,val}/ and '
                  'meta/{train,val}.txt; MMPretrain\'s dataset guide says how to get it)',
}
#: the task folders of tools/misc/generate_synthetic_data.py (``<out>/<task>``)
SYNTHETIC_TASKS = ('coco', 'ade20k', 'imagenet')


class DataNotFoundError(FileNotFoundError):
    """Paths a config's data loaders or evaluators read are missing; the message lists them
    all and says how to get or generate the data."""


def _is_local(path):
    return isinstance(path, str) and path != '' and '://' not in path


def _dataset_paths(dataset, where):
    """``(path, key)`` for each file or folder a dataset config reads: its annotation file
    and its data prefixes, joined with its ``data_root`` (the root alone when it names
    neither)."""
    if not dataset:
        return []
    if 'datasets' in dataset:  # ConcatDataset and friends
        return [p for i, d in enumerate(dataset['datasets'])
                for p in _dataset_paths(d, f'{where}.datasets[{i}]')]
    if 'dataset' in dataset:  # RepeatDataset, ClassBalancedDataset, ...
        return _dataset_paths(dataset['dataset'], f'{where}.dataset')
    root = dataset.get('data_root') or ''
    paths = []
    if _is_local(dataset.get('ann_file')):
        paths.append((osp.join(root, dataset['ann_file']), f'{where}.ann_file'))
    prefix = dataset.get('data_prefix')
    split = dataset.get('split')
    if (str(dataset.get('type')).endswith('ImageNet') and _is_local(split)
            and not (dataset.get('ann_file') or prefix)):
        # MMPretrain's ImageNet(split=...) reads <root>/<split>/ (and meta/<split>.txt when
        # there, else it lists the class folders)
        return [(osp.join(root, split), f'{where}.split')]
    if isinstance(prefix, str):
        prefix = {'': prefix}
    for key, value in (prefix or {}).items():
        if _is_local(value):
            paths.append((osp.join(root, value), f'{where}.data_prefix' + (f'.{key}' * bool(key))))
    if not paths and _is_local(root):
        paths.append((root, f'{where}.data_root'))
    return paths


def _evaluator_paths(evaluator, where):
    if isinstance(evaluator, (list, tuple)):
        return [p for i, e in enumerate(evaluator) for p in _evaluator_paths(e, f'{where}[{i}]')]
    if isinstance(evaluator, dict) and _is_local(evaluator.get('ann_file')):
        return [(evaluator['ann_file'], f'{where}.ann_file')]
    return []


def missing_data(cfg, keys):
    """``{path: [config keys reading it]}`` for every missing path of the loaders and
    evaluators named in ``keys`` (``'train_dataloader'``, ``'val_evaluator'``, ...), in the
    order of ``keys``."""
    missing = {}
    for key in keys:
        section = cfg.get(key)
        if not section:
            continue
        if key.endswith('_evaluator'):
            paths = _evaluator_paths(section, key)
        else:
            paths = _dataset_paths(section.get('dataset'), f'{key}.dataset')
        for path, where in paths:
            if not osp.exists(path):
                missing.setdefault(path, []).append(where)
    return missing


def _synthetic_out(paths):
    """``<out>`` when every missing path lies in ``<out>/<task>`` of the synthetic data
    generator (``data/synthetic/coco/...``), with that task; else ``(None, None)``."""
    found = set()
    for path in paths:
        parts = osp.normpath(path).split(osp.sep)
        hits = [i for i, part in enumerate(parts)
                if part in SYNTHETIC_TASKS and i > 0 and parts[i - 1] == 'synthetic']
        if not hits:
            return None, None
        found.add((osp.sep.join(parts[:hits[0]]) or '.', parts[hits[0]]))
    return found.pop() if len(found) == 1 else (None, None)


def check_data_roots(cfg, keys, config_path):
    """Raise one :class:`DataNotFoundError` listing every missing path that the loaders and
    evaluators in ``keys`` read, and how to get or generate the data."""
    missing = missing_data(cfg, keys)
    if not missing:
        return
    width = max(len(p) for p in missing)
    lines = [f'{config_path}: its data is not on this machine. Missing:']
    lines += [f'  {path:{width}}  ({", ".join(where)})' for path, where in missing.items()]
    out, task = _synthetic_out(missing)
    if task is not None:
        lines.append(f'This is a synthetic data set; generate it with '
                     f'`python tools/misc/generate_synthetic_data.py --task {task} --out {out}`.')
    else:
        expected = DATA_HELP.get(cfg.get('default_scope'), 'its data set')
        roots = [cfg[k].dataset.get('data_root') for k in keys
                 if k.endswith('_dataloader') and cfg.get(k) and cfg[k].get('dataset')]
        root = next((r for r in roots if _is_local(r)), None)
        link = (f' (`ln -s /path/to/your/copy {osp.normpath(root)}`; relative paths are '
                f'relative to the folder you run in)') if root else ''
        lines.append(f'The config expects {expected}. Put or symlink your copy there{link}. '
                     f'To see the whole pipeline work without downloading anything, run '
                     f'`make demo` (synthetic data).')
    raise DataNotFoundError('\n'.join(lines))

"""A clear message when a real config runs without its data set on disk."""
import os.path as osp

DATA_HELP = {
    'mmdet': 'COCO 2017 (README, section "Data": data/coco/annotations/instances_*2017.json '
             'and data/coco/{train,val}2017/)',
    'mmseg': 'ADE20K (README, section "Data": data/ade/ADEChallengeData2016/'
             '{images,annotations}/{training,validation}/)',
    'mmpretrain': 'ImageNet-1K (README, section "Data": data/imagenet/{train,val}/ and '
                  'meta/{train,val}.txt)',
}


class DataNotFoundError(FileNotFoundError):
    pass


def _dataset_paths(dataset):
    """The files/folders a dataset config reads, joined with its data_root."""
    if dataset is None:
        return []
    if 'datasets' in dataset:  # ConcatDataset and friends
        return [p for d in dataset['datasets'] for p in _dataset_paths(d)]
    if 'dataset' in dataset:  # RepeatDataset, ClassBalancedDataset, ...
        return _dataset_paths(dataset['dataset'])
    root = dataset.get('data_root', '') or ''
    paths = []
    if root:
        paths.append(root)
    ann = dataset.get('ann_file')
    if ann:
        paths.append(osp.join(root, ann))
    return paths


def check_data_roots(cfg, loaders, config_path):
    """Raise one readable error naming the first missing data path of ``loaders``."""
    for name in loaders:
        loader = cfg.get(name)
        if not loader:
            continue
        for path in _dataset_paths(loader.get('dataset')):
            if path and not osp.exists(path):
                task = DATA_HELP.get(cfg.get('default_scope'), 'the data set')
                raise DataNotFoundError(
                    f'{name}: {path!r} does not exist. {config_path} expects {task}. '
                    f'To see the whole pipeline work without downloading anything, run '
                    f'`make demo` (synthetic data), or point the config at your copy with '
                    f'--cfg-options {name}.dataset.data_root=/path/to/data')

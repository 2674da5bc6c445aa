"""The model zoo: ``model-index.yml``, the metafiles it imports, and ``zoo://<name>``.

``model-index.yml`` (repository root; ``mmdccnext/.mim/`` in an installed package, where
``mim`` looks too) imports one ``metafile.yml`` per task folder of ``configs/``; each model
entry names its config and, once a checkpoint is published, its ``Weights`` URL (file name
``<name>_<YYYYMMDD>-<sha256[:8]>.pth``) and optionally ``Weights SHA256`` (the full hash).

Configs name pretrained weights by zoo name (``zoo://dccnext-b2_8xb128_in1k``); MMEngine's
``CheckpointLoader`` dispatches that scheme here, and the weights are fetched through the
verified, cached download of :mod:`mmdccnext.apis.download` (from the mirror in
``$MMDCCNEXT_MODEL_ZOO_MIRROR`` when set). An entry without ``Weights`` (nothing released
yet) gives one clear error saying how to get weights. ``$MMDCCNEXT_MODEL_INDEX`` points the
zoo at another model-index file.
"""
import difflib
import os
import os.path as osp

from mmengine.runner.checkpoint import CheckpointLoader

from .download import (download_checkpoint, load_checkpoint_from_url, mirrored_url,
                       register_http_loader)

ZOO_PREFIX = 'zoo://'
INDEX_ENV = 'MMDCCNEXT_MODEL_INDEX'


class NoWeightsError(FileNotFoundError):
    """The model-zoo entry exists, but no checkpoint of it has been released."""


class UnknownModelError(KeyError):
    """No model-zoo entry has this name; the message lists the known ones."""

    def __str__(self):  # KeyError's own repr-quotes the message
        return str(self.args[0])


def model_index_file():
    """``$MMDCCNEXT_MODEL_INDEX``, else the source checkout's ``model-index.yml``, else the
    copy packaged in ``mmdccnext/.mim`` (``pip install .``, as ``mim`` expects it)."""
    from_env = os.environ.get(INDEX_ENV)
    if from_env:
        if not osp.isfile(from_env):
            raise FileNotFoundError(f'${INDEX_ENV}={from_env!r}: no such model-index file')
        return from_env
    package = osp.dirname(osp.dirname(osp.abspath(__file__)))
    candidates = (osp.join(osp.dirname(package), 'model-index.yml'),
                  osp.join(package, '.mim', 'model-index.yml'))
    for candidate in candidates:
        if osp.isfile(candidate):
            return candidate
    raise FileNotFoundError(f'no model-index.yml at {" or ".join(candidates)}; set '
                            f'${INDEX_ENV} to the model index to use')


def configs_root(index_file=None):
    """The ``configs/`` folder next to the model index."""
    return osp.join(osp.dirname(index_file or model_index_file()), 'configs')


def load_model_index(index_file=None):
    """``{name: entry}`` over the model index and every file it imports, in any layout
    :func:`mmdccnext.apis.model_index.read_model_index` reads (models inline, ``Import`` lists
    anywhere)."""
    from .model_index import read_model_index
    entries, origin = {}, {}
    for model, path in read_model_index(index_file or model_index_file()):
        name = model.get('Name')
        if not name:
            raise ValueError(f'{path}: a model entry without Name: {model}')
        if name in entries:
            raise ValueError(f'{path}: model name {name!r} is already used in {origin[name]}')
        entries[name], origin[name] = model, path
    return entries


def nearest_names(name, known, n=3, cutoff=0.6):
    """``did you mean ...?`` with the known names closest to ``name`` (case ignored; a name
    typed short is compared with the start of each known one too), or all known names when
    none is close."""
    name = name.lower()

    def similarity(candidate):
        candidate = candidate.lower()
        return max(difflib.SequenceMatcher(None, name, candidate).ratio(),
                   difflib.SequenceMatcher(None, name, candidate[:len(name)]).ratio())

    scores = {k: similarity(k) for k in known}
    close = sorted((k for k in known if scores[k] >= cutoff), key=lambda k: (-scores[k], k))
    if close:
        return (f'did you mean {" or ".join(close[:n])}? (all {len(known)}: '
                f'python tools/download_checkpoint.py --list)')
    return f'known names: {", ".join(sorted(known))}'


def lookup(name, index_file=None):
    """The entry called ``name`` (``zoo://`` prefix optional)."""
    name = name[len(ZOO_PREFIX):] if name.startswith(ZOO_PREFIX) else name
    models = load_model_index(index_file)
    if name not in models:
        raise UnknownModelError(f'{ZOO_PREFIX}{name}: no model of that name in the model zoo; '
                                f'{nearest_names(name, models)}')
    return models[name]


def find_entry(name_or_config, index_file=None):
    """The entry for a zoo name or for one of the zoo's config files (path or file name)."""
    if not name_or_config.endswith('.py'):
        return lookup(name_or_config, index_file)
    index_file = index_file or model_index_file()
    root = osp.dirname(index_file)
    models = load_model_index(index_file).values()
    if osp.isfile(name_or_config):
        wanted = osp.realpath(name_or_config)
        for model in models:
            if osp.realpath(osp.join(root, model.get('Config', ''))) == wanted:
                return model
    # e.g. a checkout's config while the index is an installed package's copy
    same_name = [m for m in models
                 if osp.basename(m.get('Config', '')) == osp.basename(name_or_config)]
    if len(same_name) == 1:
        return same_name[0]
    raise UnknownModelError(f'{name_or_config}: no model-zoo entry has this config (see '
                            f'{index_file} and the metafiles it imports)')


def final_checkpoint(entry):
    """Where ``tools/train.py <entry's config>`` writes its last checkpoint: the default work
    dir ``work_dirs/<config name>/``, ``epoch_<Epochs>.pth`` or ``iter_<Iterations>.pth`` of
    the entry's metadata."""
    config = entry.get('Config', '')
    meta = entry.get('Metadata') or {}
    if 'Epochs' in meta:
        last = f'epoch_{meta["Epochs"]}.pth'
    elif 'Iterations' in meta:
        last = f'iter_{meta["Iterations"]}.pth'
    else:
        last = 'epoch_N.pth'
    return f'work_dirs/{osp.splitext(osp.basename(config))[0] or entry["Name"]}/{last}'


def weights_of(entry):
    """``(url, sha256 or None)`` of an entry's released checkpoint, mirror applied."""
    url = entry.get('Weights')
    if not url:
        name = entry['Name']
        config = entry.get('Config', 'its config')
        trained = final_checkpoint(entry)
        if config.startswith('configs/classification/'):
            use = (f'where a config names it as pretrained backbone, pass that file with '
                   f'--cfg-options model.backbone.init_cfg.checkpoint={trained} (or '
                   f'model.backbone.init_cfg=None to start from scratch)')
        else:
            use = (f'use that file where the zoo name was given (e.g. tools/test.py CONFIG '
                   f'{trained})')
        raise NoWeightsError(
            f'{ZOO_PREFIX}{name}: no checkpoint of {name} has been released yet. Train it with '
            f'`python tools/train.py {config}`, which ends with {trained}; {use}.')
    return mirrored_url(url), entry.get('Weights SHA256')


def fetch_checkpoint(source, cache_dir=None, progress=True, index_file=None):
    """Local path of a verified checkpoint, downloaded into the cache when not there yet.

    Args:
        source (str): a zoo name (``zoo://`` optional), a config file of the zoo, or an
            http(s) URL.
        cache_dir (str, optional): default ``$TORCH_HOME/hub/checkpoints``.
    """
    if source.startswith(('http://', 'https://')):
        return download_checkpoint(source, cache_dir=cache_dir, progress=progress)
    url, sha256 = weights_of(find_entry(source, index_file))
    return download_checkpoint(url, sha256, cache_dir=cache_dir, progress=progress)


def load_from_zoo(filename, map_location=None):
    """``CheckpointLoader`` scheme ``zoo://<name>``."""
    url, sha256 = weights_of(lookup(filename))
    return load_checkpoint_from_url(url, map_location=map_location, sha256=sha256)


def register_zoo_loader():
    CheckpointLoader.register_scheme(prefixes=ZOO_PREFIX, force=True)(load_from_zoo)


def register_download_loaders():
    """MMEngine's ``CheckpointLoader``: http(s) URLs through the verified download and the
    new scheme ``zoo://<name>``. Idempotent; called when ``mmdccnext`` is imported."""
    register_http_loader()
    register_zoo_loader()


# ------------------------------------------------------------------------------------
# The model-zoo table of docs/en/model_zoo.md, generated from the metafiles
# ------------------------------------------------------------------------------------
#: Input size of the metafiles' FLOPs per task folder (stated in each metafile's header).
FLOPS_INPUT = {'classification': '224²', 'detection': '1280×800', 'segmentation': '512²'}
_METRIC_NAMES = {'Top 1 Accuracy': 'top-1', 'box AP': 'box AP', 'mask AP': 'mask AP',
                 'mIoU': 'mIoU'}


def _count(value, suffix):
    return f'{value / 1e9:.2f} G' if suffix == 'G' else f'{value / 1e6:.2f} M'


def _schedule(meta):
    data = meta.get('Training Data', '?')
    if 'Epochs' in meta:
        length = f'{meta["Epochs"]} ep'
    elif 'Iterations' in meta:
        length = f'{meta["Iterations"] // 1000}k it'
    else:
        length = '?'
    techniques = meta.get('Training Techniques') or []
    amp = ', AMP' if 'Mixed Precision Training' in techniques else ''
    return f'{data}, {length}{amp}'


def _results(entry):
    parts = []
    for result in entry.get('Results') or []:
        for metric, value in (result.get('Metrics') or {}).items():
            if metric in _METRIC_NAMES:
                parts.append(f'{_METRIC_NAMES[metric]} {value}')
    return ', '.join(parts) or '—'


def model_zoo_markdown(index_file=None, link_prefix='../../'):
    """The Markdown table of every model-zoo entry, in index order.

    ``link_prefix`` leads from the page the table is written into to the repository root
    (``docs/en/`` by default), so the config links resolve on GitHub.
    """
    rows = ['| name (config) | data, schedule | params | FLOPs | result (paper) | weights |',
            '|---|---|---|---|---|---|']
    for name, entry in load_model_index(index_file).items():
        meta = entry.get('Metadata') or {}
        config = entry.get('Config', '')
        task = config.split('/')[1] if config.count('/') >= 2 else ''
        label = f'[`{name}`]({link_prefix}{config})' if config else f'`{name}`'
        if entry.get('Alias Of'):
            label += f' (alias of `{entry["Alias Of"]}`)'
        flops = (f'{_count(meta["FLOPs"], "G")} @ {FLOPS_INPUT.get(task, "?")}'
                 if 'FLOPs' in meta else '?')
        params = _count(meta['Parameters'], 'M') if 'Parameters' in meta else '?'
        weights = f'[download]({entry["Weights"]})' if entry.get('Weights') else 'none'
        rows.append(f'| {label} | {_schedule(meta)} | {params} | {flops} | {_results(entry)} '
                    f'| {weights} |')
    return '\n'.join(rows) + '\n'

"""Model indexes: reading any layout, and our classification models in MMPretrain's lookup.

:func:`read_model_index` reads a model index as OpenMMLab's ``mim`` and MMPretrain's
``ModelHub`` (both through ``modelindex``) do, for the layouts a model index is written in:
model entries inline under ``Models``, and ``Import`` lists of further files in the index and
in any file it imports, each path relative to the file that names it (``*`` wildcards
allowed); a ``Models`` item may also be the path of a file holding one model or a list of
them. YAML and JSON files (Markdown model cards are not read). The model zoo
(:mod:`mmdccnext.apis.zoo`: ``zoo://<name>``, ``tools/download_checkpoint.py``) and
:func:`register_model_index` both read through it, so they know the same names.

MMPretrain's ``get_model`` / ``list_models`` / ``ImageClassificationInferencer`` take a model
name from ``mmpretrain.apis.ModelHub``. :func:`register_model_index` (run by
``import mmdccnext``) adds there the classification entries of the zoo's model index (those
whose results are an ``Image Classification`` task or whose config lies in a
``classification`` folder), so that::

    mmpretrain.list_models('dccnext*')
    model = mmpretrain.get_model('dccnext-b0_8xb128_in1k', pretrained='zoo://...' or a path)

Only classification entries are added: MMPretrain builds every model of its hub with its own
registry, which has no detectors or segmentors. Those are built by name with
:func:`mmdccnext.apis.init_model`, and :func:`mmdccnext.apis.config_file` gives the config
file of a name for MMDetection's ``DetInferencer`` and MMSegmentation's ``MMSegInferencer``.
"""
import glob
import json
import os.path as osp

import yaml

#: The task name of classification results in OpenMMLab metafiles.
CLASSIFICATION_TASK = 'Image Classification'


def _key(mapping, name):
    """``mapping``'s key spelled ``name`` in any case (model indexes ignore the case of
    their keys), or None."""
    for key in mapping:
        if isinstance(key, str) and key.lower() == name:
            return key
    return None


def _get(mapping, name):
    key = _key(mapping, name) if isinstance(mapping, dict) else None
    return None if key is None else mapping[key]


def _read_file(path):
    if path.endswith(('.yml', '.yaml')):
        with open(path) as f:
            return yaml.safe_load(f)
    if path.endswith('.json'):
        with open(path) as f:
            return json.load(f)
    raise ValueError(f'{path}: a model index file must be YAML (.yml, .yaml) or JSON (.json)')


def _paths(reference, named_in):
    """The files ``reference`` (relative to the file ``named_in``, wildcards allowed) means."""
    path = osp.join(osp.dirname(named_in), str(reference))
    if any(c in str(reference) for c in '*?['):
        return sorted(glob.glob(path))
    if not osp.isfile(path):
        raise FileNotFoundError(f'{named_in} imports {reference}, which does not exist')
    return [path]


def _models_of(content, path):
    """(entry, file) of the model entries in ``content`` read from ``path``: a list of
    models, a single model, or a ``Models`` list whose items are models or model files."""
    if isinstance(content, list):
        items = content
    elif isinstance(content, dict) and _key(content, 'models') is not None:
        items = content[_key(content, 'models')] or []
        items = [items] if isinstance(items, (str, dict)) else items
    elif isinstance(content, dict) and _key(content, 'model') is not None:
        items = [content[_key(content, 'model')]]
    elif isinstance(content, dict) and _key(content, 'name') is not None:
        items = [content]
    else:
        items = []
    for item in items:
        if isinstance(item, dict):
            yield item, path
        elif isinstance(item, str):
            for model_file in _paths(item, path):
                yield from _models_of(_read_file(model_file), model_file)
        else:
            raise ValueError(f'{path}: a model entry must be a mapping or a file path, got '
                             f'{item!r}')


def read_model_index(index_file):
    """``[(entry, file)]``: every model entry of ``index_file`` and of the files it imports
    (depth first: a file's own models, then its imports in order), with the file each entry
    is written in. An ``Import`` of a file that does not exist raises ``FileNotFoundError``
    naming both; a file imported twice is read once."""
    entries, seen = [], set()

    def walk(path):
        real = osp.realpath(path)
        if real in seen:
            return
        seen.add(real)
        content = _read_file(path)
        entries.extend(_models_of(content, path))
        imports = _get(content, 'import') or []
        for reference in [imports] if isinstance(imports, str) else imports:
            for imported in _paths(reference, path):
                walk(imported)

    walk(index_file)
    return entries


def is_classification(entry):
    """Whether a model entry is an image classifier: a result of the ``Image Classification``
    task, or a config in a ``classification`` folder (this repository's layout)."""
    results = _get(entry, 'results') or []
    if any(_get(r, 'task') == CLASSIFICATION_TASK for r in results if isinstance(r, dict)):
        return True
    config = _get(entry, 'config') or ''
    return 'classification' in osp.normpath(str(config)).split(osp.sep)[:-1]


def register_model_index(index_file=None):
    """Add the classification models of the model index (default: the zoo's,
    :func:`mmdccnext.apis.zoo.model_index_file`) to MMPretrain's ``ModelHub``; idempotent.

    Config paths are relative to the folder of the index file (as ``mim`` reads them).
    Returns the names added: empty when they are there already or mmpretrain is not
    installed. Any other failure raises; ``import mmdccnext`` turns it into one warning.
    """
    try:
        from mmpretrain.apis import ModelHub
    except ImportError:  # mmdccnext works without mmpretrain (detection, segmentation)
        return []
    from modelindex.models.Model import Model  # what ModelHub holds (mmpretrain needs it)

    from .zoo import model_index_file
    index_file = index_file or model_index_file()
    root = osp.dirname(osp.abspath(index_file))
    hub = getattr(ModelHub, '_models_dict', None)
    if not isinstance(hub, dict):
        raise RuntimeError('mmpretrain.apis.ModelHub has no _models_dict (mmpretrain 1.x '
                           'keeps its models there)')
    added = []
    for entry, path in read_model_index(index_file):
        if not is_classification(entry):
            continue
        name = str(_get(entry, 'name')).lower()
        if ModelHub.has(name):
            continue
        # what ModelHub.register_model_index does for each model of a whole file, for the
        # classification entries only
        metainfo = Model.from_dict(entry, path)
        config = metainfo.config
        if config and not osp.isabs(config):
            metainfo.config = osp.join(root, config)
        hub[name] = metainfo
        added.append(name)
    return added

"""Our classification models in MMPretrain's own model lookup.

MMPretrain's ``get_model`` / ``list_models`` / ``ImageClassificationInferencer`` take a model
name from ``mmpretrain.apis.ModelHub``, which can take more model indexes than MMPretrain's
(``ModelHub.register_model_index``). :func:`register_model_index` adds the classification
metafile of our model zoo there, so that after ``import mmdccnext``::

    mmpretrain.list_models('dccnext*')
    model = mmpretrain.get_model('dccnext-b0_8xb128_in1k', pretrained='zoo://...' or a path)

Only the classification entries are added: MMPretrain builds every model of its hub with its
own registry, which has no detectors or segmentors. Those are built by name with
:func:`mmdccnext.apis.init_model`, and :func:`mmdccnext.apis.config_file` gives the config
file of a name for MMDetection's ``DetInferencer`` and MMSegmentation's
``MMSegInferencer``.
"""
import os.path as osp
import warnings

from .zoo import model_index_file

CLASSIFICATION_METAFILE = osp.join('configs', 'classification', 'metafile.yml')


def register_model_index(index_file=None):
    """Add our classification models to MMPretrain's ``ModelHub`` (idempotent).

    Returns the names added (empty when they are there already or mmpretrain is not
    installed).
    """
    try:
        from mmpretrain.apis import ModelHub
    except ImportError:  # mmdccnext works without mmpretrain (detection, segmentation)
        return []
    except Exception as error:  # a broken mmpretrain must not break detection/segmentation
        warnings.warn(f'mmdccnext: not registering models with MMPretrain, whose import '
                      f'failed: {type(error).__name__}: {error}')
        return []
    try:
        root = osp.dirname(index_file or model_index_file())
    except FileNotFoundError as error:
        warnings.warn(f'mmdccnext: not registering models with MMPretrain: {error}')
        return []
    from modelindex.load_model_index import load  # what ModelHub reads the file with
    metafile = osp.join(root, CLASSIFICATION_METAFILE)
    names = [m.name.lower() for m in load(metafile).models]
    if all(ModelHub.has(name) for name in names):
        return []
    # Config paths in the metafile are relative to the repository root (or mmdccnext/.mim)
    ModelHub.register_model_index(metafile, config_prefix=root)
    return names

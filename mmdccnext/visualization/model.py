"""A model from a config (and optional checkpoint), its DCCNeXt backbone and DCConv blocks.

Block names are the backbone's module paths ``stages.<stage>.<block>`` (0-based, as in the
parameter names ``backbone.stages.2.3.mixer.weight``). The paper numbers blocks 1-based over
the whole network ("the 7th block" of B2 is ``stages.2.0``); :func:`paper_block_number` gives
that number for the picture titles.
"""
from collections import OrderedDict

from mmengine.logging import MMLogger
from mmengine.model import is_model_wrapper
from mmengine.runner.checkpoint import CheckpointLoader, load_state_dict

from mmdccnext.apis.inference import init_model
from mmdccnext.models.backbones import DCCNeXt


def model_for_pictures(config, checkpoint=None, cfg_options=None, seed=0, device='cpu'):
    """``config``'s model in eval mode (built by :func:`mmdccnext.apis.init_model`), with
    ``checkpoint`` loaded into its backbone (:func:`load_backbone_weights`: a whole model's
    ``backbone.*`` keys, e.g. a classifier checkpoint for a detection config, or a backbone
    alone). Without a checkpoint: the config's random initialisation, seeded with ``seed``.
    """
    model = init_model(config, None, device, cfg_options, seed=seed)
    if checkpoint is not None:
        load_backbone_weights(model, checkpoint)
    return model


def find_backbone(model):
    """``(name, module)`` of the DCCNeXt backbone inside ``model`` (which may be wrapped)."""
    if is_model_wrapper(model):
        model = model.module
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, DCCNeXt)]
    if not found:
        raise ValueError(f'model: no DCCNeXt backbone in this {type(model).__name__}; the '
                         'config must use type="mmdccnext.DCCNeXt" for its backbone')
    if len(found) > 1:
        raise ValueError(f'model: {len(found)} DCCNeXt modules ({[n for n, _ in found]}); '
                         'expected exactly one backbone')
    return found[0]


def load_backbone_weights(model, checkpoint):
    """Load ``checkpoint`` into ``model``; fail unless it holds weights of the backbone."""
    prefix, backbone = find_backbone(model)
    ckpt = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f'checkpoint: {checkpoint!r} holds no state dict')
    state = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v)
                        for k, v in state.items())
    own = backbone.state_dict().keys()
    logger = MMLogger.get_current_instance()
    with_prefix = [k for k in own if f'{prefix}.{k}' in state] if prefix else []
    bare = [k for k in own if k in state]
    if with_prefix and len(with_prefix) >= len(bare):
        load_state_dict(model, state, strict=False, logger=logger)
        matched = with_prefix
    elif bare:  # a backbone-only state dict
        load_state_dict(backbone, state, strict=False, logger=logger)
        matched = bare
    else:
        raise ValueError(f'checkpoint: {checkpoint!r} has no weights of the DCCNeXt backbone '
                         f'(no key "{prefix}.stages..." or "stages..."); first keys: '
                         f'{list(state)[:5]}')
    if len(matched) < len(own):
        logger.warning(f'checkpoint: {len(own) - len(matched)} of {len(own)} backbone '
                       'tensors are not in the checkpoint and keep their initialisation')


def dcconv_blocks(backbone):
    """``OrderedDict`` name -> block of the DCConv blocks of a DCCNeXt, in forward order."""
    return OrderedDict((f'stages.{i}.{j}', block) for i, stage in enumerate(backbone.stages)
                       for j, block in enumerate(stage) if block.use_dcconv)


def resolve_blocks(backbone, names=None):
    """Check block names against the backbone; ``None``: the first DCConv block of each
    DCConv stage (the blocks of the paper's Fig. 3 and 4 for B2: its 7th and 16th).

    Returns:
        OrderedDict: name -> DCCNeXtBlock, in the order given.
    """
    valid = dcconv_blocks(backbone)
    if not valid:
        raise ValueError('blocks: this DCCNeXt has no DCConv block (kernel_sizes '
                         f'{backbone.kernel_sizes})')
    if names is None:
        names = [n for n in valid if n.endswith('.0')]
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError(f'blocks: give at least one block; valid: {", ".join(valid)}')
    chosen = OrderedDict()
    for name in names:
        if name in valid:
            chosen[name] = valid[name]
            continue
        parts = name.split('.') if isinstance(name, str) else []
        if (len(parts) == 3 and parts[0] == 'stages' and parts[1].isdigit()
                and parts[2].isdigit() and int(parts[1]) < len(backbone.stages)
                and int(parts[2]) < len(backbone.stages[int(parts[1])])):
            why = 'is a depthwise-convolution block, not a DCConv block'
        else:
            why = 'is not a block of this backbone (names are stages.<stage>.<block>, 0-based)'
        raise ValueError(f'blocks: {name!r} {why}; valid DCConv blocks: {", ".join(valid)}')
    return chosen


def block_stage(name):
    return int(name.split('.')[1])


def paper_block_number(backbone, name):
    """1-based number of block ``stages.i.j`` over all blocks, as the paper counts."""
    _, stage, block = name.split('.')
    return sum(backbone.depths[:int(stage)]) + int(block) + 1


def test_pipeline_cfg(cfg):
    """The test (or val) pipeline of a config, as a list of transform dicts."""
    for loader in ('test_dataloader', 'val_dataloader'):
        dataset = (cfg.get(loader) or {}).get('dataset') or {}
        if dataset.get('pipeline'):
            return list(dataset['pipeline'])
    if cfg.get('test_pipeline'):
        return list(cfg.test_pipeline)
    raise ValueError('config: no test pipeline (test_dataloader.dataset.pipeline, '
                     'val_dataloader.dataset.pipeline or test_pipeline)')

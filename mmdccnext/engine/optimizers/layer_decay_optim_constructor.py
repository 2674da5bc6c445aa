"""Layer-wise learning-rate decay for any model whose backbone has ``get_layer_depth``.

MMDetection's and MMSegmentation's ``LearningRateDecayOptimizerConstructor`` accept only
backbones whose class name contains "ConvNeXt" (and hard-code ConvNeXt's layer ids), and
MMPretrain's ``LearningRateDecayOptimWrapperConstructor`` asks the top-level model for
``get_layer_depth``, which detectors and segmentors do not have. This constructor asks
the *backbone* (``model.backbone.get_layer_depth(name, prefix='backbone.')``, or the model
itself when it is a bare backbone), so it works for DCCNeXt (and MMPretrain backbones
with ``get_layer_depth``) under MMDetection, MMSegmentation and MMPretrain alike.
"""
from collections import OrderedDict

import torch.nn as nn
from mmengine.dist import get_dist_info
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPERS, OPTIMIZERS
from torch.nn.modules.batchnorm import _NormBase

from mmdccnext.registry import OPTIM_WRAPPER_CONSTRUCTORS

_NORMS = (_NormBase, nn.GroupNorm, nn.LayerNorm)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LearningRateDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Optimizer-wrapper constructor with layer-wise learning-rate decay.

    Config: ``optim_wrapper=dict(constructor='mmdccnext.LearningRateDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=..., weight_decay=...), paramwise_cfg=dict(...))``.

    A parameter at depth ``i`` of ``num_layers`` (as returned by the backbone's
    ``get_layer_depth``; everything outside the backbone is at ``num_layers - 1``) gets
    ``lr = base_lr * layer_decay_rate ** (num_layers - 1 - i)``. Parameters are grouped
    by (depth, weight decay, lr), one optimizer param group each, with the extra keys
    ``layer_depth``, ``lr_scale`` and ``param_names``. Frozen parameters
    (``requires_grad=False``) are left out.

    ``paramwise_cfg`` keys:

    - ``layer_decay_rate`` (float): decay per layer; ``decay_rate`` (the MMDetection /
      MMSegmentation spelling) is accepted too. Defaults to 1 (no decay).
    - ``decay_type`` (str): ``'layer_wise'`` (default; DCCNeXt: one depth per block)
      or ``'stage_wise'`` (DCCNeXt: one depth per stage).
    - ``num_layers``: ignored (the backbone reports its depth); accepted so that
      MMDetection/MMSegmentation ConvNeXt configs parse. Note that DCCNeXt counts
      ``sum(depths) + 2`` layers layer-wise, so ConvNeXt's decay rates (tuned for 6
      or 12 layers) decay much more strongly here.
    - ``norm_decay_mult`` / ``bias_decay_mult`` / ``flat_decay_mult`` (float):
      weight-decay multipliers for parameters of norm layers, for biases, and for
      other 1-D parameters (layer scale). All default to 0: no weight decay on norms,
      biases and layer scale.
    - ``custom_keys`` (dict): ``{substring: dict(lr_mult=..., decay_mult=...)}``; the
      longest matching substring of the full parameter name wins and replaces the
      weight-decay rule above; ``lr_mult`` multiplies the decayed lr.
    """

    def add_params(self, params, module, prefix='', **kwargs):
        """Append the param groups of ``module`` (the whole model) to ``params``."""
        cfg = self.paramwise_cfg
        decay_rate = cfg.get('layer_decay_rate', cfg.get('decay_rate', 1.0))
        decay_type = cfg.get('decay_type', 'layer_wise')
        if 'num_layers' in cfg:
            print_log(
                'LearningRateDecayOptimizerConstructor: paramwise_cfg.num_layers is '
                'ignored; the layer count comes from the backbone.',
                logger='current')
        get_depth = self._depth_function(module, decay_type)
        custom_keys = cfg.get('custom_keys', {})
        sorted_keys = sorted(sorted(custom_keys), key=len, reverse=True)
        mults = {
            k: cfg.get(k, 0.)
            for k in ('norm_decay_mult', 'bias_decay_mult', 'flat_decay_mult')
        }

        groups = OrderedDict()
        seen = set()
        for mod_name, mod in module.named_modules(prefix=prefix.rstrip('.')):
            for name, param in mod.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                full_name = f'{mod_name}.{name}' if mod_name else name
                depth, num_layers = get_depth(full_name)
                scale = decay_rate**(num_layers - 1 - depth)
                lr_mult, weight_decay = 1., None
                key = next((k for k in sorted_keys if k in full_name), None)
                if self.base_wd is not None:
                    if key is not None:
                        weight_decay = self.base_wd * custom_keys[key].get('decay_mult', 1.)
                    elif isinstance(mod, _NORMS):
                        weight_decay = self.base_wd * mults['norm_decay_mult']
                    elif name == 'bias':
                        weight_decay = self.base_wd * mults['bias_decay_mult']
                    elif param.ndim <= 1:
                        weight_decay = self.base_wd * mults['flat_decay_mult']
                    else:
                        weight_decay = self.base_wd
                if key is not None:
                    lr_mult = custom_keys[key].get('lr_mult', 1.)
                lr = self.base_lr * scale * lr_mult
                group_key = (depth, weight_decay, lr)
                if group_key not in groups:
                    group = dict(
                        params=[],
                        param_names=[],
                        lr=lr,
                        layer_depth=depth,
                        lr_scale=scale * lr_mult)
                    if weight_decay is not None:
                        group['weight_decay'] = weight_decay
                    groups[group_key] = group
                groups[group_key]['params'].append(param)
                groups[group_key]['param_names'].append(full_name)

        if get_dist_info()[0] == 0:
            lines = [
                f'Layer-wise lr decay ({decay_type}, rate {decay_rate}): '
                f'{len(groups)} param groups'
            ]
            for g in groups.values():
                lines.append(f"  depth {g['layer_depth']}: lr={g['lr']:.3g} "
                             f"weight_decay={g.get('weight_decay', 'default')} "
                             f"({len(g['params'])} params, e.g. {g['param_names'][0]})")
            print_log('\n'.join(lines), logger='current')
        params.extend(groups.values())

    @staticmethod
    def _depth_function(model, decay_type):
        backbone = getattr(model, 'backbone', None)
        if backbone is not None and hasattr(backbone, 'get_layer_depth'):
            owner, prefix = backbone, 'backbone.'
        elif hasattr(model, 'get_layer_depth'):
            owner, prefix = model, ''
        else:
            raise NotImplementedError(
                f'Layer-wise lr decay needs a backbone with `get_layer_depth`; '
                f'{type(backbone or model).__name__} has none.')
        if decay_type == 'layer_wise':
            return lambda name: owner.get_layer_depth(name, prefix)
        if decay_type == 'stage_wise':
            try:
                owner.get_layer_depth(prefix, prefix, decay_type='stage_wise')
            except TypeError:
                raise NotImplementedError(
                    f"decay_type='stage_wise' needs get_layer_depth(..., decay_type=...), "
                    f'which {type(owner).__name__} does not have.') from None
            return lambda name: owner.get_layer_depth(name, prefix, decay_type='stage_wise')
        raise ValueError(f"decay_type must be 'layer_wise' or 'stage_wise', got {decay_type!r}")

    def __call__(self, model):
        if hasattr(model, 'module'):
            model = model.module
        optim_wrapper_cfg = self.optim_wrapper_cfg.copy()
        optim_wrapper_cfg.setdefault('type', 'OptimWrapper')
        optimizer_cfg = self.optimizer_cfg.copy()
        params = []
        self.add_params(params, model)
        optimizer_cfg['params'] = params
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        return OPTIM_WRAPPERS.build(optim_wrapper_cfg, default_args=dict(optimizer=optimizer))

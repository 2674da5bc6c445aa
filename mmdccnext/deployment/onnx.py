"""ONNX export of DCCNeXt classifiers and backbones, and ONNX Runtime inference.

The graphs hold standard ONNX operators only: DCConv is recorded through its export path
(:mod:`mmdccnext.ops.export`: row blocks in a ``Scan`` - MatMul, ReduceMin, TopK, Gather -,
an ``If`` for the exact fallback), so ONNX Runtime, or any other runtime, runs them without
custom operators, memory grows linearly with the number of patches, and the cluster
indices are the ones PyTorch computes for the same features.

Exported with the dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``), which
records the ``If``. The input is the *normalised* image, ``(B, 3, H, W)`` float32 RGB:
``(pixel - mean) / std`` with the mean and std of the config's data preprocessor; both are
stored in the model's metadata (``mean``, ``std``, ``to_rgb``).

Dynamic shapes (``dynamic=True``): batch, height and width are symbolic. DCConv needs at
least ``K + 3`` patches per stage for its screened path (``K`` = 12 in stage 3, 18 in stage
4), so the graph is valid from the size where stage 4 has 21 patches (e.g. 160 x 160); the
exporter's own range of each dimension is stored in the metadata (``dynamic_ranges``).
"""
import ctypes
import json
import os.path as osp

import numpy as np
import torch
from torch import nn

from mmdccnext.apis.inference import get_config, init_model
from mmdccnext.ops import DCConv
from mmdccnext.registry import MODELS
from mmdccnext.utils.fileio import atomic_path

#: Stage outputs of the exported multi-scale backbone.
STAGES = (0, 1, 2, 3)


def _dcconvs(model):
    return [m for m in model.modules() if isinstance(m, DCConv)]


class _Recorded(nn.Module):
    """Runs ``model`` and appends the cluster indices of every DCConv (in module order) to
    its outputs, so that a runtime's clusters can be compared with PyTorch's."""

    def __init__(self, model, forward_fn):
        super().__init__()
        self.model = model
        self.forward_fn = forward_fn
        self.dcconvs = _dcconvs(model)

    def forward(self, image):
        saved = [m.record_indices for m in self.dcconvs]
        for m in self.dcconvs:
            m.record_indices = True
        try:
            outs = self.forward_fn(self.model, image)
            indices = tuple(m.last_indices for m in self.dcconvs)
        finally:
            for m, flag in zip(self.dcconvs, saved):
                m.record_indices = flag
                m.last_indices = None
        return tuple(outs) + indices


def _classifier_forward(classifier, image):
    return (classifier.head(classifier.extract_feat(image)), )


def _backbone_forward(backbone, image):
    return tuple(backbone(image))


def classifier_module(classifier, cluster_indices=False):
    """An ``nn.Module`` mapping the normalised image to the logits (``(B, num_classes)``,
    before softmax) of an MMPretrain ``ImageClassifier``; with ``cluster_indices`` the
    (B, N, K) indices of every DCConv follow."""
    if not (hasattr(classifier, 'extract_feat') and hasattr(classifier, 'head')):
        raise TypeError('classifier must be an MMPretrain ImageClassifier (extract_feat + head), '
                        f'got {type(classifier).__name__}')
    return _Recorded(classifier, _classifier_forward) if cluster_indices else _Wrapped(
        classifier, _classifier_forward)


def backbone_module(backbone, cluster_indices=False):
    """An ``nn.Module`` mapping the normalised image to the backbone's outputs (and, with
    ``cluster_indices``, the indices of every DCConv)."""
    return _Recorded(backbone, _backbone_forward) if cluster_indices else _Wrapped(
        backbone, _backbone_forward)


class _Wrapped(nn.Module):

    def __init__(self, model, forward_fn):
        super().__init__()
        self.model = model
        self.forward_fn = forward_fn

    def forward(self, image):
        return self.forward_fn(self.model, image)


def multiscale_backbone(cfg, model):
    """The DCCNeXt backbone of ``model`` returning the four normed stage maps
    ``(B, C_i, H / 2^(i+2), W / 2^(i+2))``, weights shared with ``model.backbone``.

    A classification backbone (pooled last stage) is rebuilt with all four outputs; the
    output norms it did not have are LayerNorms at their initial (identity) value, as when a
    detector loads ImageNet weights. Returns ``(backbone, new_norms)``.
    """
    bb_cfg = cfg.model.backbone.copy()
    bb_cfg.pop('init_cfg', None)
    bb_cfg.update(out_indices=STAGES, gap_before_final_norm=False)
    backbone = MODELS.build(bb_cfg)  # default init: LayerNorms at weight 1, bias 0
    missing, unexpected = backbone.load_state_dict(model.backbone.state_dict(), strict=False)
    if unexpected or any(not k.startswith('norm') for k in missing):
        raise RuntimeError(f'backbone weights do not fit: missing {missing}, unexpected '
                           f'{unexpected}')
    return backbone.eval(), sorted({k.split('.')[0] for k in missing})


def _normalisation(cfg):
    """Mean, std and channel order of the config's data preprocessor."""
    pre = cfg.get('data_preprocessor') or cfg.model.get('data_preprocessor') or {}
    return dict(
        mean=list(pre.get('mean', [0., 0., 0.])),
        std=list(pre.get('std', [1., 1., 1.])),
        to_rgb=bool(pre.get('to_rgb', False)))


def _normalisation_metadata(cfg):
    return {k: json.dumps(v) for k, v in _normalisation(cfg).items()}


def _check_shape(shape):
    if (not isinstance(shape, (tuple, list)) or len(shape) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
            or min(shape) < 32):
        raise ValueError(f'shape must be (H, W), two ints >= 32, got {shape!r}')
    return tuple(shape)


def export_module(module, shape, out_file, output_names, batch=1, dynamic=False,
                  metadata=None):
    """Export ``module`` (image -> outputs) for inputs ``(batch, 3, H, W)`` to ``out_file``.

    The file is written atomically (temporary file in the same directory, then
    ``os.replace``). With ``dynamic``, batch, height and width are symbolic (the example
    batch is then at least 2). Returns the metadata written into the model.
    """
    H, W = _check_shape(shape)
    dynamic_shapes = None
    if dynamic:
        auto = torch.export.Dim.AUTO
        dynamic_shapes = {'image': {0: auto, 2: auto, 3: auto}}
        batch = max(batch, 2)  # torch.export fixes a dimension whose example size is 1
    image = torch.zeros(batch, 3, H, W)
    program = torch.onnx.export(
        module.eval(), (image, ),
        input_names=['image'],
        output_names=list(output_names),
        dynamic_shapes=dynamic_shapes,
        dynamo=True,
        external_data=False,
        verbose=False)
    meta = dict(metadata or {})
    meta['export_shape'] = json.dumps([batch, 3, H, W])
    if dynamic:
        meta['dynamic_ranges'] = json.dumps(_input_ranges(program))
    for key, value in meta.items():
        program.model.metadata_props[key] = str(value)
    fold_weight_unsqueezes(program.model.graph)
    with atomic_path(out_file, suffix='.onnx') as tmp:
        program.save(tmp, external_data=False)
    return meta


def fold_weight_unsqueezes(graph):
    """Replace every ``Unsqueeze`` of a weight that nothing else reads by the unsqueezed
    weight (an onnx_ir graph, changed in place). Returns how many were folded.

    Why: the exported Conv-FFN runs its Linear layers as 1x1 convolutions
    (``ConvFFN._forward_nchw``), so the graph reads ``Unsqueeze(weight)``. The exporter's
    optimiser leaves it (it folds no input of more than 8192 values), and ONNX Runtime folds
    it when the session is built, keeping the memory of both copies: 80 MiB more held by a
    DCCNeXt-B2 session (docs/en/deployment.md).
    """
    import onnx_ir as ir
    folded = 0
    outputs = {v.name for v in graph.outputs}
    for node in list(graph):
        if node.op_type != 'Unsqueeze' or node.domain not in ('', 'ai.onnx'):
            continue
        weight, axes = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
        if (weight is None or not weight.is_initializer() or weight.const_value is None
                or len(weight.uses()) != 1 or weight.name in outputs or axes is None
                or axes.const_value is None):
            continue
        data = weight.const_value.numpy()
        axes_list = axes.const_value.numpy().reshape(-1)
        rank = data.ndim + axes_list.size
        array = np.ascontiguousarray(np.expand_dims(data, tuple(int(a) % rank for a in axes_list)))
        out = node.outputs[0]
        name = out.name
        value = ir.Value(type=ir.TensorType(weight.dtype), shape=ir.Shape(array.shape),
                         const_value=ir.tensor(array, name=name))
        out.replace_all_uses_with(value)
        graph.remove(node, safe=True)
        graph.initializers.pop(weight.name)
        if axes.is_initializer() and not axes.uses():
            graph.initializers.pop(axes.name)
        value.name = name
        graph.register_initializer(value)
        folded += 1
    return folded


def _input_ranges(program):
    """``{axis: [lower, upper]}`` of the symbolic input dimensions torch.export inferred."""
    ep = program.exported_program
    user_input = ep.graph_signature.user_inputs[0]
    placeholder = next(n for n in ep.graph.nodes if n.op == 'placeholder'
                       and n.name == user_input)
    ranges = {}
    for axis, size in enumerate(placeholder.meta['val'].shape):
        if isinstance(size, torch.SymInt):
            vr = ep.range_constraints.get(size.node.expr)
            if vr is not None:  # bounds are sympy integers or (int) infinity
                ranges[axis] = [int(b) if b.is_Integer else None for b in (vr.lower, vr.upper)]
    return ranges


def _check_classifier_cfg(cfg):
    if cfg.model.get('type') not in ('ImageClassifier', 'mmpretrain.ImageClassifier'):
        raise ValueError('config: a classification config (model type ImageClassifier) is '
                         f'needed, got model type {cfg.model.get("type")!r}')


def export_classifier(cfg, model, shape, out_file, dynamic=False, cluster_indices=False):
    """Export the classifier ``model`` of ``cfg`` (image -> ``logits``, before softmax)."""
    _check_classifier_cfg(cfg)
    extra = [f'cluster{i}' for i in range(len(_dcconvs(model)))] if cluster_indices else []
    return export_module(
        classifier_module(model, cluster_indices), shape, out_file, ['logits'] + extra,
        dynamic=dynamic, metadata=_normalisation_metadata(cfg))


def export_backbone(cfg, model, shape, out_file, dynamic=False, cluster_indices=False):
    """Export the multi-scale backbone of ``model`` (image -> ``stage0`` ... ``stage3``,
    see :func:`multiscale_backbone`). Returns ``(backbone, new_norms)``."""
    backbone, new_norms = multiscale_backbone(cfg, model)
    extra = [f'cluster{i}' for i in range(len(_dcconvs(backbone)))] if cluster_indices else []
    export_module(
        backbone_module(backbone, cluster_indices), shape, out_file,
        [f'stage{i}' for i in STAGES] + extra,
        dynamic=dynamic, metadata=_normalisation_metadata(cfg))
    return backbone, new_norms


def export_onnx(config, checkpoint=None, shape=(224, 224), out_file='dccnext.onnx',
                backbone_file=None, dynamic=False, cluster_indices=False):
    """Export a classification config's classifier and its multi-scale backbone.

    Args:
        config (str | Config): a classification config (MMPretrain ``ImageClassifier``
            with a DCCNeXt backbone).
        checkpoint (str, optional): weights (local file, http(s) or ``zoo://``); without
            one the weights are the config's initialisation.
        shape (tuple[int, int]): (H, W) of the export input.
        out_file (str): the classifier (output ``logits``).
        backbone_file (str, optional): the backbone (outputs ``stage0`` ... ``stage3``);
            default: ``out_file`` with ``_backbone`` before the extension.
        dynamic (bool): symbolic batch, height and width.
        cluster_indices (bool): also output the (B, N, K) indices of every DCConv
            (``cluster0``, ...), e.g. to compare a runtime's clusters with PyTorch's.

    Returns:
        dict: ``classifier`` and ``backbone`` (the files), ``new_norms`` (output norms the
        classifier did not have), ``normalisation`` (mean, std, to_rgb).
    """
    _check_shape(shape)
    cfg = get_config(config)
    _check_classifier_cfg(cfg)
    # strict: an export must not silently keep random weights for a tensor the file lacks
    model = init_model(cfg, checkpoint, strict=True)
    cfg = model.cfg
    if backbone_file is None:
        stem, ext = osp.splitext(out_file)
        backbone_file = f'{stem}_backbone{ext or ".onnx"}'
    export_classifier(cfg, model, shape, out_file, dynamic, cluster_indices)
    _, new_norms = export_backbone(cfg, model, shape, backbone_file, dynamic, cluster_indices)
    return dict(
        classifier=out_file,
        backbone=backbone_file,
        new_norms=new_norms,
        normalisation=_normalisation(cfg))


def preprocess(image, shape, mean, std):
    """An RGB ``(h, w, 3)`` uint8 image -> the normalised ``(1, 3, H, W)`` float32 input
    (bilinear resize to ``shape`` = (H, W))."""
    import mmcv
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'image must be an (h, w, 3) RGB array, got shape {image.shape}')
    H, W = _check_shape(tuple(int(v) for v in shape))
    resized = mmcv.imresize(image, (W, H), interpolation='bilinear').astype(np.float32)
    normed = (resized - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(normed.transpose(2, 0, 1)[None])


def ort_session(onnx_file, threads=None):
    """An ONNX Runtime CPU session; ``threads``: intra-op threads (default: torch's).

    ONNX Runtime's memory pattern is off: it plans one block for all intermediate tensors
    from the first run, and at 1280 x 800 that block made the peak resident memory 1.7x
    larger for DCCNeXt-B2 and for ConvNeXt-T alike (1488 vs 863 MiB and 839 vs 504 MiB on
    the AMD EPYC, ONNX Runtime 1.32, 1 thread), at no measurable speed-up.

    Once the session is built, the C heap's free memory goes back to the system
    (:func:`release_free_heap`): building a session copies every weight (graph optimisations,
    blocked layouts) and frees the originals, which glibc keeps in the process. For
    DCCNeXt-B2 at 1280 x 800 that was 146 MiB of the session's 296 MiB (docs/en/deployment.md).
    """
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.enable_mem_pattern = False
    opts.log_severity_level = 3
    session = ort.InferenceSession(onnx_file, opts, providers=['CPUExecutionProvider'])
    release_free_heap()
    return session


def release_free_heap():
    """Return the free memory of the C heap to the system (glibc's ``malloc_trim(0)``; a
    no-op where the C library has none). Frees nothing in use and changes no setting."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows)
        return
    trim(0)


def run_session(session, image):
    """Run ``session`` on the float32 image array; ``{output name: array}``."""
    names = [o.name for o in session.get_outputs()]
    outs = session.run(names, {session.get_inputs()[0].name: np.asarray(image, np.float32)})
    return dict(zip(names, outs))


def read_metadata(onnx_file):
    """The metadata written by :func:`export_module` (values JSON-decoded where possible)."""
    import onnx
    model = onnx.load(onnx_file, load_external_data=False)
    meta = {}
    for prop in model.metadata_props:
        try:
            meta[prop.key] = json.loads(prop.value)
        except ValueError:
            meta[prop.key] = prop.value
    return meta

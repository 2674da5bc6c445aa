"""Deployment: ONNX export of classifiers and backbones, ONNX Runtime inference."""
from .onnx import (STAGES, backbone_module, classifier_module, export_backbone, export_classifier,
                   export_module, export_onnx, multiscale_backbone, ort_session, preprocess,
                   read_metadata, run_session)

__all__ = [
    'STAGES', 'backbone_module', 'classifier_module', 'export_backbone', 'export_classifier',
    'export_module', 'export_onnx', 'multiscale_backbone', 'ort_session',
    'preprocess', 'read_metadata', 'run_session'
]

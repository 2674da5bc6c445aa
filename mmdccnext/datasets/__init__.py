from .synthetic import (DEFAULTS, MANIFEST_NAME, SYNTHETIC_ADE20K_CLASSES, SYNTHETIC_CLASSES,
                        SYNTHETIC_PALETTE, ade20k_class_names, generate, generate_ade20k,
                        generate_coco, generate_imagenet, mask_to_polygons, read_manifest)

__all__ = [
    'DEFAULTS', 'MANIFEST_NAME', 'SYNTHETIC_ADE20K_CLASSES', 'SYNTHETIC_CLASSES',
    'SYNTHETIC_PALETTE', 'ade20k_class_names', 'generate', 'generate_ade20k', 'generate_coco',
    'generate_imagenet', 'mask_to_polygons', 'read_manifest'
]

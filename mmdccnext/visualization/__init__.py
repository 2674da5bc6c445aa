"""Pictures of what DCConv does: cluster maps (paper Fig. 3) and kernel-tap profiles (Fig. 4)."""
from .clusters import (BlockClusters, ClusterPanel, ClusterVisualization, ModelInput, auto_centers,
                       build_test_transforms, check_centers, load_image, prepare_input,
                       record_clusters, visualize_clusters, visualize_clusters_from_config)
from .files import save_png, write_file_atomic
from .kernels import (kernel_profiles, plot_kernel_profiles, plot_kernel_profiles_from_config,
                      profile_matrix)
from .model import (dcconv_blocks, find_backbone, model_for_pictures, paper_block_number,
                    resolve_blocks)
from .patches import PatchGrid, stage_stride_offset

__all__ = [
    'BlockClusters', 'ClusterPanel', 'ClusterVisualization', 'ModelInput', 'PatchGrid',
    'auto_centers', 'build_test_transforms', 'check_centers', 'dcconv_blocks', 'find_backbone',
    'kernel_profiles', 'load_image', 'model_for_pictures', 'paper_block_number',
    'plot_kernel_profiles', 'plot_kernel_profiles_from_config', 'prepare_input',
    'profile_matrix', 'record_clusters', 'resolve_blocks', 'save_png', 'stage_stride_offset',
    'visualize_clusters', 'visualize_clusters_from_config', 'write_file_atomic'
]

"""Cluster pictures during training, written to the runner's visualizer backends."""
from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from mmdccnext.registry import HOOKS
from mmdccnext.visualization import find_backbone, resolve_blocks, visualize_clusters
from mmdccnext.visualization.clusters import check_centers, load_image


@HOOKS.register_module()
class ClusterVisualizationHook(Hook):
    """Every ``interval`` training iterations, draw the clusters of one fixed image of the
    validation set (paper Fig. 3) and hand the picture to ``runner.visualizer.add_image``,
    i.e. to every configured backend (``LocalVisBackend``: ``<work_dir>/<timestamp>/
    vis_data/vis_image/<name>_<iter>.png``; ``TensorboardVisBackend``: an image summary).

    Opt in from a config::

        custom_hooks = [dict(type='mmdccnext.ClusterVisualizationHook', interval=500,
                             blocks=['stages.2.0', 'stages.3.0'])]

    Args:
        interval (int): draw after every ``interval``-th training iteration.
        blocks (list[str], optional): DCConv blocks ``stages.<i>.<j>``; default: the first
            DCConv block of each DCConv stage.
        centers (list[tuple], optional): ``(x, y)`` pixels of the image file; default:
            ``num_centers`` centres picked automatically at the first picture and kept, so
            that all pictures show the same centres.
        num_centers (int): number of automatic centres.
        image_index (int): index of the image in the dataset.
        dataloader (str): 'val' (default) or 'test': the dataset that provides the image
            file (its ``img_path``) and the test pipeline.
        panel_size (int | None): long side of each panel in pixels (None: the image's).
        name (str): image name for the backends.
    """
    priority = 'LOW'

    def __init__(self,
                 interval=500,
                 blocks=None,
                 centers=None,
                 num_centers=1,
                 image_index=0,
                 dataloader='val',
                 panel_size=256,
                 name='dcconv_clusters'):
        for arg, value in (('interval', interval), ('num_centers', num_centers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f'{arg} must be an int >= 1, got {value!r}')
        if not isinstance(image_index, int) or image_index < 0:
            raise ValueError(f'image_index must be an int >= 0, got {image_index!r}')
        if dataloader not in ('val', 'test'):
            raise ValueError(f"dataloader must be 'val' or 'test', got {dataloader!r}")
        self.interval = interval
        self.blocks = list(blocks) if blocks is not None else None
        self.centers = [tuple(c) for c in centers] if centers is not None else None
        self.num_centers = num_centers
        self.image_index = image_index
        self.dataloader = dataloader
        self.panel_size = panel_size
        self.name = name
        self._image = self._transforms = None

    def before_train(self, runner):
        # fail at the start, not at iteration `interval`
        _, backbone = find_backbone(runner.model)
        resolve_blocks(backbone, self.blocks)
        loop = runner.val_loop if self.dataloader == 'val' else runner.test_loop
        if loop is None:
            raise ValueError(f'ClusterVisualizationHook: dataloader={self.dataloader!r} but the '
                             f'config has no {self.dataloader}_dataloader / {self.dataloader}'
                             '_cfg to take the image from')
        dataset = loop.dataloader.dataset
        if not hasattr(dataset, 'get_data_info') or not hasattr(dataset, 'pipeline'):
            raise ValueError('ClusterVisualizationHook: the dataset '
                             f'{type(dataset).__name__} has no get_data_info / pipeline')
        if self.image_index >= len(dataset):
            raise ValueError(f'image_index {self.image_index} is out of range for the '
                             f'{len(dataset)} images of the {self.dataloader} dataset')
        info = dataset.get_data_info(self.image_index)
        if not info.get('img_path'):
            raise ValueError('ClusterVisualizationHook: the dataset gives no img_path for '
                             f'image {self.image_index}')
        self._image = load_image(info['img_path'])
        self._transforms = dataset.pipeline.transforms
        if self.centers is not None:
            self.centers = check_centers(self.centers, self._image.shape)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if not self.every_n_train_iters(runner, self.interval) or not is_main_process():
            return
        result = visualize_clusters(runner.model, self._image, self._transforms, self.blocks,
                                    self.centers, self.num_centers, self.panel_size)
        if self.centers is None:
            self.centers = result.centers  # the same centres in every later picture
        runner.visualizer.add_image(self.name, result.canvas, step=runner.iter + 1)

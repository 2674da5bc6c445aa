"""PNG output of the visualisation tools, written atomically."""
import cv2
import numpy as np

from mmdccnext.utils.fileio import write_file_atomic

__all__ = ['save_png', 'write_file_atomic']


def save_png(rgb, path):
    """Save an RGB uint8 array as a PNG, atomically."""
    if not str(path).lower().endswith('.png'):
        raise ValueError(f'out: expected a .png path, got {path!r}')
    ok, encoded = cv2.imencode('.png', np.ascontiguousarray(rgb[..., ::-1]),
                               [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError(f'could not encode the picture for {path!r}')
    write_file_atomic(path, encoded.tobytes())

"""Files written whole or not at all: a temporary file in the same directory, then a rename."""
import os
import os.path as osp
import uuid

import cv2
import numpy as np


def write_file_atomic(path, data):
    """Write ``data`` (bytes) to ``path`` through a temporary file in the same directory."""
    path = osp.abspath(path)
    os.makedirs(osp.dirname(path), exist_ok=True)
    tmp = osp.join(osp.dirname(path), f'.{osp.basename(path)}.{uuid.uuid4().hex[:12]}.tmp')
    try:
        with open(tmp, 'xb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def save_png(rgb, path):
    """Save an RGB uint8 array as a PNG, atomically."""
    if not str(path).lower().endswith('.png'):
        raise ValueError(f'out: expected a .png path, got {path!r}')
    ok, encoded = cv2.imencode('.png', np.ascontiguousarray(rgb[..., ::-1]),
                               [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError(f'could not encode the picture for {path!r}')
    write_file_atomic(path, encoded.tobytes())

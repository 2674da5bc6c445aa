"""Files written whole or not at all: a temporary file in the same directory, then a rename."""
import os
import os.path as osp
import uuid


def write_file_atomic(path, data):
    """Write ``data`` (bytes) to ``path`` through a temporary file in the same directory,
    fsynced before ``os.replace``; on any error the temporary file is removed and ``path``
    keeps its previous content."""
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

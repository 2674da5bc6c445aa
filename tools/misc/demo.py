"""`make demo`: train and evaluate a DCCNeXt-B0 RetinaNet on synthetic COCO on the CPU.

Unknown arguments go to tools/train.py, e.g. `--cfg-options train_cfg.max_epochs=2`.
"""
import argparse
import os
import os.path as osp

from mmdccnext.apis.demo import main

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    args, train_args = parser.parse_known_args()
    repo = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    os.chdir(repo)  # the demo config's data roots are relative to the repository
    main(repo, work_dir=args.work_dir, extra_train_args=train_args)

"""Print the environment for a bug report: ``python tools/misc/collect_env.py [--full]``.

The same as ``python -m mmdccnext.utils.collect_env``; when mmdccnext itself does not import
(e.g. an mmcv it cannot use), MMEngine's report and the reason are printed instead.
"""
import os.path as osp
import sys

# run from a checkout without installing: the repository root is two levels up
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

if __name__ == '__main__':
    try:
        from mmdccnext.utils.collect_env import main
    except ImportError as error:
        from mmengine.utils.dl_utils import collect_env
        for name, value in collect_env().items():
            print(f'{name}: {value}')
        print(f'mmdccnext: cannot be imported ({error})')
        sys.exit(1)
    main()

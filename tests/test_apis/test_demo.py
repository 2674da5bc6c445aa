"""`make demo`'s training command: no validation inside training (the demo evaluates the final
checkpoint once, afterwards), and a user's ``--cfg-options`` still reach tools/train.py."""
import importlib.util
import os
import os.path as osp

from mmengine.runner import Runner

from mmdccnext.apis.demo import DEMO_CONFIG, latest_log, train_command
from mmdccnext.apis.runner import load_config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _train_parser():
    spec = importlib.util.spec_from_file_location('train_tool', osp.join(REPO, 'tools',
                                                                         'train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_args


def test_demo_trains_without_validation_and_keeps_the_users_options(tmp_path):
    cmd = train_command('python', str(tmp_path / 'work'),
                        ['--cfg-options', 'randomness.seed=2', 'train_cfg.max_epochs=1'])
    assert cmd[:3] == ['python', 'tools/train.py', DEMO_CONFIG]
    args = _train_parser()(cmd[2:])
    cfg = load_config(osp.join(REPO, args.config), args.cfg_options, args.work_dir)
    # the user's options are merged with the demo's, not put in their place
    assert cfg.randomness.seed == 2 and cfg.train_cfg.max_epochs == 1
    assert cfg.val_cfg is None and cfg.val_dataloader is None and cfg.val_evaluator is None
    # the config on its own (tools/train.py without the demo) still validates at the end
    plain = load_config(osp.join(REPO, DEMO_CONFIG))
    assert plain.val_cfg is not None and plain.train_cfg.val_interval == plain.train_cfg.max_epochs
    # MMEngine accepts the three None together and builds no validation loop
    runner = Runner.from_cfg(cfg)
    assert runner.val_loop is None
    # the evaluation the demo runs afterwards reads the unchanged test split
    assert cfg.test_dataloader.dataset.ann_file == plain.test_dataloader.dataset.ann_file


def test_the_summary_names_the_newest_training_log(tmp_path):
    """A work dir keeps earlier demos' runs: the summary names this run's log (it named the
    oldest before)."""
    assert latest_log(str(tmp_path)) is None
    logs = []
    for stamp, mtime in [('20261207_064516', 2000), ('20261207_032825', 1000)]:
        (tmp_path / stamp).mkdir()
        log = tmp_path / stamp / f'{stamp}.log'
        log.write_text('log')
        os.utime(log, (mtime, mtime))
        logs.append(str(log))
    (tmp_path / 'test' / 'x').mkdir(parents=True)
    (tmp_path / 'test' / 'x' / 'x.log').write_text('the evaluation\'s log')
    assert latest_log(str(tmp_path)) == logs[0]

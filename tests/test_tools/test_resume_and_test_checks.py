"""``--resume`` falls back past a damaged latest checkpoint; ``tools/test.py`` refuses a
checkpoint that does not belong to the model."""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

import mmdccnext  # noqa: F401
from mmdccnext.apis.runner import check_key_match, resume_checkpoint
from mmdccnext.utils.checkpoint import CheckpointError

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _work_dir(tmp_path, steps, latest):
    for step in steps:
        torch.save(dict(meta=dict(epoch=step), state_dict=dict(w=torch.full((64, ), step))),
                   tmp_path / f'epoch_{step}.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / f'epoch_{latest}.pth'))
    return tmp_path


def _fresh_logger(name):
    """A logger writing to the stdout that capsys captures now (print_log's 'current')."""
    from mmengine.logging import MMLogger
    return MMLogger.get_instance(f'{name}_{os.getpid()}_{id(sys.stdout)}')


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_resume_takes_the_latest_when_complete(tmp_path):
    work = _work_dir(tmp_path, [1, 2, 3], latest=3)
    assert resume_checkpoint(str(work)) == str(work / 'epoch_3.pth')


def test_resume_falls_back_to_newest_complete_checkpoint_and_says_so(tmp_path, capsys):
    _fresh_logger('fallback')
    work = _work_dir(tmp_path, [1, 2, 3], latest=3)
    _truncate(work / 'epoch_3.pth')
    _truncate(work / 'epoch_2.pth')
    assert resume_checkpoint(str(work)) == str(work / 'epoch_1.pth')
    out = capsys.readouterr().out
    assert f'the latest checkpoint {work / "epoch_3.pth"}' in out
    assert 'is damaged: truncated or corrupted' in out
    assert f'resuming from {work / "epoch_1.pth"}, the newest complete checkpoint' in out


def test_resume_without_any_complete_checkpoint_names_each_and_what_to_do(tmp_path):
    work = _work_dir(tmp_path, [4], latest=4)  # max_keep_ckpts=1: nothing older
    _truncate(work / 'epoch_4.pth')
    with pytest.raises(CheckpointError, match=rf'no complete checkpoint in {tmp_path}.*'
                       rf'{work / "epoch_4.pth"}: truncated.*max_keep_ckpts'):
        resume_checkpoint(str(work))
    (work / 'epoch_4.pth').unlink()
    with pytest.raises(CheckpointError, match='epoch_4.pth: the file is missing'):
        resume_checkpoint(str(work))


def test_no_last_checkpoint_starts_from_the_beginning(tmp_path):
    assert resume_checkpoint(str(tmp_path)) is None


def test_key_match_refuses_foreign_and_reports_partial(capsys):
    _fresh_logger('key_match')
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    with pytest.raises(ValueError, match=r'checkpoint x.pth: none of its 1 keys .*random weights'):
        check_key_match(model, dict(state_dict={'backbone.w': torch.ones(1)}), 'x.pth')
    state = {f'module.{k}': v for k, v in model.state_dict().items() if k.startswith('0.')}
    assert check_key_match(model, dict(state_dict=state), 'y.pth') == 0.5
    assert "checkpoint y.pth has 2 of the model's 4 keys (50.0%)" in capsys.readouterr().out
    assert check_key_match(model, model.state_dict(), 'z.pth') == 1.0


@pytest.mark.slow
def test_tools_test_refuses_a_foreign_checkpoint(tmp_path):
    from mmdccnext.datasets import generate
    data = tmp_path / 'imagenet'
    generate('imagenet', str(data), seed=0, num_train=6, num_val=6, image_size=(64, 64))
    foreign = tmp_path / 'foreign.pth'
    torch.save(dict(state_dict={'conv1.weight': torch.ones(8, 3, 3, 3)}), foreign)
    config = osp.join(REPO, 'configs', 'classification', 'dccnext-b0_synthetic.py')
    proc = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'test.py'), config, str(foreign),
         '--work-dir', str(tmp_path / 'work'), '--cfg-options',
         f'test_dataloader.dataset.data_root={data}', 'test_dataloader.num_workers=0'],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert f'checkpoint {foreign}: none of its 1 keys' in last, proc.stderr[-2000:]
    assert 'accuracy/top1' not in proc.stdout + proc.stderr  # nothing was evaluated


def test_tools_test_takes_files_urls_and_zoo_names_with_or_without_scheme(tmp_path):
    from mmdccnext.apis.runner import checkpoint_source
    (tmp_path / 'a.pth').write_bytes(b'')
    assert checkpoint_source(str(tmp_path / 'a.pth')) == str(tmp_path / 'a.pth')
    assert checkpoint_source('https://host/x.pth') == 'https://host/x.pth'
    assert checkpoint_source('zoo://dccnext-b2_8xb128_in1k') == 'zoo://dccnext-b2_8xb128_in1k'
    assert checkpoint_source('dccnext-b2_8xb128_in1k') == 'zoo://dccnext-b2_8xb128_in1k'
    with pytest.raises(FileNotFoundError, match=r"checkpoint: 'nothing.pth' is no file, no URL "
                       r'and no model-zoo name \(zoo://nothing.pth: no model of that name.*'
                       r'known names: .*dccnext-b2_8xb128_in1k'):
        checkpoint_source('nothing.pth')

"""The launchers start the checkout's .venv/bin/python when it exists, else `python`, and
PYTHON overrides both: each launcher runs, from a copy of tools/ in a scratch checkout, with
stand-ins for the interpreter (and for srun) that record how they were called."""
import os
import shutil
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHERS = {
    'dist_train.sh': ['cfg.py', '2'],
    'dist_test.sh': ['cfg.py', 'ckpt.pth', '2'],
    'slurm_train.sh': ['partition', 'job', 'cfg.py', 'work'],
    'slurm_test.sh': ['partition', 'job', 'cfg.py', 'ckpt.pth'],
}


def recorder(path, name, log):
    """An executable that appends ``name`` and its arguments to ``log`` (the srun stand-in
    records its arguments, which hold the interpreter it would start on every node)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / 'checkout'
    (root / 'tools' / 'misc').mkdir(parents=True)
    for name in LAUNCHERS:
        shutil.copy2(os.path.join(REPO, 'tools', name), root / 'tools' / name)
    shutil.copy2(os.path.join(REPO, 'tools', 'misc', 'launcher_python.sh'),
                 root / 'tools' / 'misc' / 'launcher_python.sh')
    return root


@pytest.mark.parametrize('launcher', sorted(LAUNCHERS))
def test_launcher_picks_venv_then_path_and_honours_python(launcher, checkout, tmp_path):
    log = tmp_path / 'calls.log'
    bin_dir = tmp_path / 'bin'
    recorder(bin_dir / 'python', 'path-python', log)
    recorder(bin_dir / 'srun', 'srun', log)
    env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    env.pop('PYTHON', None)

    def launched(**extra):
        """The interpreter the launcher started: the recorder's name, or for srun (which
        starts it on the nodes) the path it was given."""
        log.write_text('')
        subprocess.run(['bash', str(checkout / 'tools' / launcher), *LAUNCHERS[launcher]],
                       env=dict(env, **extra), check=True, timeout=60)
        words = log.read_text().split()
        return words[words.index('-u') - 1] if words[0] == 'srun' else words[0]

    slurm = launcher.startswith('slurm')
    # no .venv in the checkout: `python` from the PATH
    assert launched() == ('python' if slurm else 'path-python')
    # make env has run: the checkout's interpreter, whatever the PATH says
    recorder(checkout / '.venv' / 'bin' / 'python', 'venv-python', log)
    assert launched() == (f'{checkout}/.venv/bin/python' if slurm else 'venv-python')
    # PYTHON names another interpreter
    other = tmp_path / 'other' / 'python3'
    recorder(other, 'other-python', log)
    assert launched(PYTHON=str(other)) == (str(other) if slurm else 'other-python')

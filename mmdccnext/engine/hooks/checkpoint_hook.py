"""A ``CheckpointHook`` whose checkpoints survive being killed at any moment and resume bitwise.

Atomic files. MMEngine 0.10.7's ``CheckpointHook`` removes the outdated checkpoint
(``max_keep_ckpts``) before it writes the new one, removes the previous *best* checkpoint
before it writes the new best, writes both in place (``LocalBackend.put`` opens the final
name with ``'wb'``) and rewrites ``last_checkpoint`` in place. A SIGKILL in between leaves a
truncated file, or no best checkpoint at all, or a ``last_checkpoint`` naming a removed or
partial file. For a local ``out_dir`` under the plain ``Runner`` this hook saves in this order:

1. ``runner.save_checkpoint`` into ``.<name>.tmp`` in the same directory, then fsync and
   ``os.replace`` onto ``<name>`` (:mod:`mmdccnext.utils.fileio`); one fixed temporary name
   per target, so a save repeated after a kill replaces the leftover of the killed one;
2. ``last_checkpoint`` the same way (periodic checkpoints);
3. only then remove the outdated periodic checkpoint, or the previous best one.

The checkpoint's ``message_hub`` lists in ``keep_ckpt_ids`` the outdated ids it is about to
replace as well (their files still exist at that moment), so that if the process dies before
step 3, resuming from it removes them in ``before_train``; best checkpoints written after the
checkpoint resumed from (by the run that was killed) are removed there too, since the resumed
run writes them again. Other storage backends and runners (``FlexibleRunner``'s sharded
checkpoints) keep the parent's behaviour.

Bitwise resume. MMEngine re-seeds on resume but does not save the random state, so a resumed
run draws other drop-path masks and other augmentations than an uninterrupted one. This hook

* records the RNG states of torch (CPU and, where initialised, CUDA), numpy and python at the
  end of every training iteration and restores them at the start of the next one, so that
  what runs in between (validation, checkpointing, resuming, the main process's data
  loading) never shifts the training stream, and saves them in every checkpoint
  (``resume_state``), which a resume restores;
* saves the train sampler's seed and the data workers' seed (a run without
  ``randomness.seed`` draws a new one at start, before the resume could restore it);
* for epoch-based loops, seeds numpy, python and torch before each sample's pipeline from
  ``(seed, epoch, sample index)``: what the data workers draw then depends on neither the
  worker nor its history, so persistent workers (whose random state carries over from epoch
  to epoch, and restarts after a resume) give the same augmentations as a resumed run. An
  iteration-based loop's resume replays the data from the first iteration through fresh
  workers, which reproduces their draws, so its pipeline is left alone.
"""
import functools
import multiprocessing
import os.path as osp
import random
import re

import numpy as np
import torch
from mmengine.dataset import BaseDataset
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.runner import BaseLoop, EpochBasedTrainLoop, Runner

from mmdccnext.registry import HOOKS
from mmdccnext.utils.checkpoint import load_checkpoint_file
from mmdccnext.utils.fileio import commit_file, temporary_path, write_file_atomic

RESUME_STATE = 'resume_state'  # the checkpoint key this hook adds
# message-hub key: the last training step validated (a name the log processor, which logs
# runtime_info keys starting with 'val', leaves alone)
VALIDATED = 'last_validated_step'


def _tmp_name(path):
    # deterministic (not unique): a save repeated after a kill and --resume replaces the
    # leftover of the killed one instead of adding another
    return temporary_path(path, unique=False)


def get_rng_state():
    """The RNG states of torch (CPU, CUDA where initialised), numpy and python."""
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(),
                 python=random.getstate())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    np.random.set_state(state['numpy'])
    random.setstate(state['python'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class EpochSeededPipeline:
    """A dataset's pipeline that first seeds numpy, python and torch from
    ``(seed, epoch, sample_idx)``. ``epoch`` is shared memory set by the main process
    before each epoch, which persistent data workers see too."""

    def __init__(self, pipeline, seed, epoch):
        self.pipeline, self.seed, self.epoch = pipeline, seed, epoch

    def __call__(self, results):
        if 'sample_idx' not in results:
            raise KeyError(f'{type(self).__name__}: the data info has no sample_idx (set by '
                           f'mmengine BaseDataset.get_data_info), needed to seed its pipeline')
        entropy = [self.seed % 2**64, self.epoch.value, results['sample_idx']]
        a, b = np.random.SeedSequence(entropy).generate_state(2)
        np.random.seed(a)
        random.seed(int(b))
        torch.manual_seed(int(a) << 32 | int(b))
        return self.pipeline(results)

    def __getattr__(self, name):  # e.g. ``dataset.pipeline.transforms``
        if name == 'pipeline':  # not yet set (unpickling)
            raise AttributeError(name)
        return getattr(self.pipeline, name)


def _datasets(dataset):
    """``dataset`` and the datasets it wraps (ConcatDataset, RepeatDataset, ...)."""
    yield dataset
    for inner in [getattr(dataset, 'dataset', None), *getattr(dataset, 'datasets', [])]:
        if inner is not None:
            yield from _datasets(inner)


def _sampler(loader):
    sampler = getattr(loader, 'sampler', None)
    batch_sampler = getattr(loader, 'batch_sampler', None)
    return sampler if hasattr(sampler, 'seed') else getattr(batch_sampler, 'sampler', None)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` that writes local checkpoints, best ones included, and
    ``last_checkpoint`` atomically, removes outdated checkpoints only after the new ones,
    and saves and restores what a bitwise resume needs (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rng = None  # RNG states at the end of the last training iteration
        self._loaded = None  # resume_state of the checkpoint loaded, applied in before_train
        self._epoch = None  # shared with the data workers (EpochSeededPipeline)

    def _atomic(self, runner):
        backend = getattr(self.file_backend, 'client', self.file_backend)  # FileClient
        return isinstance(runner, Runner) and isinstance(backend, LocalBackend)

    # --- what a bitwise resume needs ------------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint):
        loader = getattr(runner._train_loop, 'dataloader', None)  # a dict until it is built
        sampler = _sampler(loader)
        init_fn = getattr(loader, 'worker_init_fn', None)
        checkpoint[RESUME_STATE] = dict(
            # the iteration a resume continues from (in after_train_iter, runner.iter is
            # still that of the iteration just run)
            iter=checkpoint['meta'].get('iter', runner.iter),
            rng=self._rng if self._rng is not None else get_rng_state(),
            sampler_seed=getattr(sampler, 'seed', None),
            worker_seed=getattr(init_fn, 'keywords', {}).get('seed'))

    def after_load_checkpoint(self, runner, checkpoint):
        self._loaded = checkpoint.get(RESUME_STATE)

    def before_train(self, runner):
        super().before_train(runner)
        loader = runner.train_loop.dataloader
        state, self._loaded = self._loaded, None
        # after_load_checkpoint runs for `load_from` too: only a resume (which sets the
        # loop's iteration from the checkpoint) continues the checkpoint's random streams
        if state is not None and runner.iter > 0 and state['iter'] == runner.iter:
            self._rng = state['rng']
            sampler = _sampler(loader)
            if state['sampler_seed'] is not None and sampler is not None:
                sampler.seed = state['sampler_seed']
            init_fn = getattr(loader, 'worker_init_fn', None)
            if state['worker_seed'] is not None and isinstance(init_fn, functools.partial):
                loader.worker_init_fn = functools.partial(
                    init_fn.func, *init_fn.args, **{**init_fn.keywords,
                                                    'seed': state['worker_seed']})
            self._remove_later_best_checkpoints(runner)
            self._redo_interrupted_validation(runner)
        else:
            self._rng = get_rng_state()
        if isinstance(runner.train_loop, EpochBasedTrainLoop) and self._epoch is None:
            seed = getattr(_sampler(loader), 'seed', None)
            self._epoch = multiprocessing.RawValue('q', runner.epoch)
            for dataset in _datasets(loader.dataset):
                pipeline = getattr(dataset, 'pipeline', None)
                # BaseDataset gives each data info its sample_idx; wrappers with their own
                # pipeline (e.g. mmdet's MultiImageMixDataset) may not
                if (isinstance(dataset, BaseDataset) and callable(pipeline)
                        and not isinstance(pipeline, EpochSeededPipeline)):
                    dataset.pipeline = EpochSeededPipeline(
                        pipeline, runner.seed if seed is None else seed, self._epoch)

    def _redo_interrupted_validation(self, runner):
        """The periodic checkpoint is written before the validation of its step (and again
        after it only when that found a new best): if the checkpoint resumed from does not
        record that validation as done, the killed run may have died in it or while saving
        its best checkpoint, so it runs again (evaluation is deterministic)."""
        loop = runner.train_loop
        if runner.val_loop is None or not self.save_best:
            return
        by_epoch = isinstance(loop, EpochBasedTrainLoop)
        step, last = (runner.epoch, loop.max_epochs) if by_epoch else (runner.iter, loop.max_iters)
        due = step >= loop.val_begin and (step % loop.val_interval == 0 or step == last)
        if due and runner.message_hub.get_info(VALIDATED, -1) < step:
            runner.logger.info(f'The checkpoint resumed from was saved before the validation '
                               f'of its {"epoch" if by_epoch else "iteration"} {step}: '
                               f'running it again')
            runner.val_loop.run()

    def after_val_epoch(self, runner, metrics):
        loop = runner._train_loop  # a dict (not built) when only validating
        if isinstance(loop, BaseLoop):
            step = runner.epoch if isinstance(loop, EpochBasedTrainLoop) else runner.iter
            runner.message_hub.update_info(VALIDATED, step)
        super().after_val_epoch(runner, metrics)

    def before_train_epoch(self, runner):
        if self._epoch is not None:
            self._epoch.value = runner.epoch

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self._rng is not None:
            set_rng_state(self._rng)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._rng = get_rng_state()  # before the parent may save a checkpoint
        super().after_train_iter(runner, batch_idx, data_batch, outputs)

    def _remove_later_best_checkpoints(self, runner):
        """Best checkpoints the checkpoint resumed from does not know: a kill after the new
        best was complete but before the periodic checkpoint naming it was saved again
        leaves one of the step resumed from, which is adopted (as the uninterrupted run has
        it) and replaces the previous best; later ones (a resume from an older checkpoint)
        the resumed run writes again, so they are removed."""
        if not (self.save_best and self._atomic(runner) and is_main_process()):
            return
        step = runner.epoch if self.by_epoch else runner.iter
        single = len(self.key_indicators) == 1
        pattern = re.escape(self.filename_tmpl).replace(r'\{\}', r'(\d+)')
        names = list(self.file_backend.list_dir_or_file(self.out_dir, list_dir=False))
        for indicator in self.key_indicators:
            ckpt_key = 'best_ckpt' if single else f'best_ckpt_{indicator}'
            score_key = 'best_score' if single else f'best_score_{indicator}'
            known = runner.message_hub.runtime_info.get(ckpt_key)
            prefix = re.escape(f'best_{indicator}_'.replace('/', '_'))
            for name in names:
                match = re.fullmatch(prefix + pattern, name)
                path = self.file_backend.join_path(self.out_dir, name)
                if not match or int(match.group(1)) < step or path == known:
                    continue
                if int(match.group(1)) == step:
                    hub = load_checkpoint_file(path)['message_hub']['runtime_info']
                    if hub.get(ckpt_key) == path and score_key in hub:
                        runner.message_hub.update_info(score_key, hub[score_key])
                        runner.message_hub.update_info(ckpt_key, path)
                        if single:
                            self.best_ckpt_path = path
                        else:
                            self.best_ckpt_path_dict[indicator] = path
                        if known:
                            self._remove(known)
                        continue
                self._remove(path)

    # --- atomic writes --------------------------------------------------------------------
    def _save_atomic(self, runner, path, **kwargs):
        tmp = _tmp_name(path)
        runner.save_checkpoint(  # master_only: writes on the main process
            self.out_dir, osp.basename(tmp), self.file_client_args,
            backend_args=self.backend_args, **kwargs)
        if is_main_process():
            commit_file(tmp, path)

    def _remove(self, path):
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):
            self.file_backend.rmtree(path)

    def _save_checkpoint_with_step(self, runner, step, meta):
        if not self._atomic(runner):
            return super()._save_checkpoint_with_step(runner, step, meta)

        # as the parent: a step saved twice (best checkpoint) is one id, and the checkpoint
        # records itself in keep_ckpt_ids and last_ckpt
        new_id = self.max_keep_ckpts > 0 and not (
            self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step)
        if new_id:
            runner.message_hub.update_info('keep_ckpt_ids', [*self.keep_ckpt_ids, step])
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)

        self._save_atomic(runner, self.last_ckpt, save_optimizer=self.save_optimizer,
                          save_param_scheduler=self.save_param_scheduler, meta=meta,
                          by_epoch=self.by_epoch, **self.args)
        if is_main_process():
            write_file_atomic(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)

        if new_id:
            full = len(self.keep_ckpt_ids) == self.max_keep_ckpts
            outdated = self.keep_ckpt_ids[0] if full else None
            self.keep_ckpt_ids.append(step)  # a deque of maxlen max_keep_ckpts
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
            if outdated is not None and is_main_process():
                self._remove(self.file_backend.join_path(
                    self.out_dir, self.filename_tmpl.format(outdated)))

    def _save_best_checkpoint(self, runner, metrics):
        """The parent's rule for what is best; the new best is complete on disk, and the
        periodic checkpoint naming it saved, before the previous best is removed."""
        if not (self.save_best and self._atomic(runner)):
            return super()._save_best_checkpoint(runner, metrics)
        step = runner.epoch if self.by_epoch else runner.iter
        cur_type = 'epoch' if self.by_epoch else 'iter'
        meta = dict(epoch=runner.epoch, iter=runner.iter)
        if 'auto' in self.key_indicators:
            self._init_rule(self.rules, [list(metrics.keys())[0]])

        outdated, updated = [], False
        single = len(self.key_indicators) == 1
        for key_indicator, rule in zip(self.key_indicators, self.rules):
            score_key = 'best_score' if single else f'best_score_{key_indicator}'
            ckpt_key = 'best_ckpt' if single else f'best_ckpt_{key_indicator}'
            best_score = runner.message_hub.runtime_info.get(score_key, self.init_value_map[rule])
            score = metrics[key_indicator]
            if score is None or not self.is_better_than[key_indicator](score, best_score):
                continue
            updated = True
            runner.message_hub.update_info(score_key, score)
            previous = self.best_ckpt_path if single else self.best_ckpt_path_dict[key_indicator]
            name = f'best_{key_indicator}_{self.filename_tmpl.format(step)}'.replace('/', '_')
            path = self.file_backend.join_path(self.out_dir, name)
            if single:
                self.best_ckpt_path = path
            else:
                self.best_ckpt_path_dict[key_indicator] = path
            runner.message_hub.update_info(ckpt_key, path)
            self._save_atomic(runner, path, save_optimizer=False, save_param_scheduler=False,
                              meta=meta, by_epoch=False)
            runner.logger.info(f'The best checkpoint with {score:0.4f} {key_indicator} at '
                               f'{step} {cur_type} is saved to {name}.')
            if previous and previous != path:
                outdated.append(previous)

        # as the parent: save the periodic checkpoint again, so that its message hub names
        # the new best (a resume then removes it when a better one comes)
        if updated and self.last_ckpt is not None:
            self._save_checkpoint_with_step(runner, step, meta)
        if is_main_process():
            for path in outdated:
                self._remove(path)
                runner.logger.info(f'The previous best checkpoint {path} is removed')

"""A ``CheckpointHook`` whose local checkpoints survive being killed at any moment.

MMEngine 0.10.7's ``CheckpointHook._save_checkpoint_with_step`` removes the outdated
checkpoint (``max_keep_ckpts``) before it writes the new one, writes the new one in place
(``LocalBackend.put`` opens the final name with ``'wb'``) and then rewrites
``last_checkpoint`` in place. A SIGKILL in between leaves a truncated ``iter_N.pth``, or a
``last_checkpoint`` naming a removed or partial file, which ``--resume`` then loads.

``AtomicCheckpointHook`` takes the same arguments and, for a local ``out_dir`` under the
plain ``Runner``, saves in this order:

1. ``runner.save_checkpoint`` into ``.<name>.tmp`` in the same directory, fsync it,
   ``os.replace`` it onto ``<name>`` (and fsync the directory);
2. ``last_checkpoint`` the same way (temporary file, fsync, ``os.replace``);
3. only then remove the outdated checkpoint.

So ``last_checkpoint`` only ever names a complete file, and the previous checkpoint stays on
disk until the new one is complete and named there. The checkpoint's own
``message_hub`` lists in ``keep_ckpt_ids`` the outdated ids it is about to replace as well
(their files still exist at that moment), so that if the process dies before step 3,
resuming from it removes them in ``before_train``. Other storage backends and runners
(``FlexibleRunner``'s sharded checkpoints) keep the parent's behaviour.
"""
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.runner import Runner

from mmdccnext.registry import HOOKS
from mmdccnext.utils.fileio import commit_file, temporary_path, write_file_atomic


def _tmp_name(path):
    # deterministic (not unique): a save repeated after a kill and --resume replaces the
    # leftover of the killed one instead of adding another
    return temporary_path(path, unique=False)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` that writes local checkpoints and ``last_checkpoint`` atomically
    and removes outdated checkpoints only after both (see the module docstring)."""

    def _save_checkpoint_with_step(self, runner, step, meta):
        backend = getattr(self.file_backend, 'client', self.file_backend)  # FileClient
        if not (isinstance(runner, Runner) and isinstance(backend, LocalBackend)):
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

        tmp = _tmp_name(self.last_ckpt)
        runner.save_checkpoint(  # master_only: writes on the main process
            self.out_dir,
            osp.basename(tmp),
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if is_main_process():
            commit_file(tmp, self.last_ckpt)
            write_file_atomic(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)

        if new_id:
            full = len(self.keep_ckpt_ids) == self.max_keep_ckpts
            outdated = self.keep_ckpt_ids[0] if full else None
            self.keep_ckpt_ids.append(step)  # a deque of maxlen max_keep_ckpts
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
            if outdated is not None and is_main_process():
                path = self.file_backend.join_path(
                    self.out_dir, self.filename_tmpl.format(outdated))
                if self.file_backend.isfile(path):
                    self.file_backend.remove(path)
                elif self.file_backend.isdir(path):
                    self.file_backend.rmtree(path)

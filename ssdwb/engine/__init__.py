"""The training loop: ``loop.train`` runs the set-up stages of ``setup`` and the epoch loop;
``step`` holds ``train_step``; ``log_window`` the device-side sums read once per log interval;
``state`` the run state a checkpoint is built from; ``distributed`` the process group; ``optim``
the sync-free SGD."""

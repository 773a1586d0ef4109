"""A run folder, written and read in one place: ``folder.RunFolder`` writes it, ``reader`` reads it
back (``Run``, ``load_run``, ``find_runs``), ``checkpoint`` holds the safe checkpoint format,
``trained`` rebuilds a model and its val data from a checkpoint, ``mlperf`` and ``tensorboard``
write the event logs."""

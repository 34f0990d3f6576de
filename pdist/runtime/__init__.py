"""What runs a job, whatever the job: the device mesh (``mesh``), joining a multi-process run
(``multihost``), the train state and step (``step``), the phase runner and its loop (``phase``), Orbax
checkpoints (``checkpoint``), the workdir layout (``workdir``), stopping on signals (``preemption``) and
files written whole (``files``)."""

"""``python -m pdist.main ARGS`` killed by SIGKILL inside its save of step N: ``kill_during_save.py N ARGS``.

The kill lands at the one moment a save is most easily mistaken for a finished one: every file of the step is
written to Orbax's temporary folder and the commit (the rename to the step's folder, in orbax-checkpoint's
``AtomicRenameTemporaryPath.finalize``) has not run. The process kills itself there, so no polling from outside
has to catch a save in flight (tests/test_reliability.py).
"""

import os
import runpy
import signal
import sys

from orbax.checkpoint._src.path import atomicity

KILL_AT = sys.argv[1]
_commit = atomicity.AtomicRenameTemporaryPath.finalize


async def _finalize(self):
    if self._final_path.name == KILL_AT:  # the step's folder (its items' folders inside are committed first)
        os.kill(os.getpid(), signal.SIGKILL)
    return await _commit(self)


atomicity.AtomicRenameTemporaryPath.finalize = _finalize
sys.argv = ["pdist.main", *sys.argv[2:]]
runpy.run_module("pdist.main", run_name="__main__", alter_sys=True)

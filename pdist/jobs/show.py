"""``--config.mode=show``: the resolved config (the file and the command line's overrides), every key with its
value, the default where it differs and what it is for; nothing is built, read or written (no workdir needed)."""

from __future__ import annotations

import ml_collections

from pdist import config as config_lib


def run(config: ml_collections.ConfigDict, workdir: str | None) -> str:
    shown = config_lib.describe(config)
    print(shown)
    return shown

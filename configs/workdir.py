"""The config a workdir's newest checkpoint was written with, such as an imported teacher's
(``python -m pdist.interop import``), which no config file describes:

    python -m pdist.main --config=configs/workdir.py:runs/adm64 --workdir=runs/adm64 --config.mode=eval
    python -m pdist.main --config=configs/workdir.py:runs/adm64 --workdir=runs/adm64 --config.train.num_steps=10000

(the second continues training it). ``--config.KEY=VALUE`` overrides it as any config file's.
"""

from pdist.pretrained import stored


def get_config(workdir: str = ""):
    if not workdir:
        raise ValueError("configs/workdir.py needs the workdir after a colon: --config=configs/workdir.py:runs/NAME.")
    config, _ = stored(workdir)
    return config

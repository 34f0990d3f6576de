"""LSUN church_outdoor at 128x128: the LSUN bedroom config on another scene.

Needs TFDS ``lsun/church_outdoor`` prepared under config.data.data_dir (a large download).
"""

import os

from pdist.config import from_file


def get_config():
    config = from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "lsun_bedroom128.py"))
    config.data.name = "lsun/church_outdoor"
    return config

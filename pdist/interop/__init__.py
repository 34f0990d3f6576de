"""Reading and writing other projects' files: one module per format, and one table of checkpoint formats.

``torch_file`` reads PyTorch ``.pt``/``.pth`` state dicts without PyTorch, as untrusted input.
:data:`FORMATS` lists the foreign checkpoints :mod:`pdist.interop.importer` turns into pdist workdirs
(``python -m pdist.interop import SOURCE WORKDIR``); adding a format is a module with ``detect(head)`` and
``load(data, source_config, source_flags)`` (a file's format) or ``detect_folder(path)`` and
``load_folder(path, source_config, source_flags)`` (a folder's, whose metadata gives its ``sha256``) and a row
here.
"""

from __future__ import annotations

from pdist.interop import diffusers, openai, pd_release

# name -> module with detect(first bytes) -> bool and load(bytes, source_config, source_flags)
#   -> (pdist config, params, EMA params, step, metadata)
FORMATS = {pd_release.NAME: pd_release, openai.NAME: openai, diffusers.NAME: diffusers}

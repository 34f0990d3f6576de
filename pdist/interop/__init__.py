"""Reading and writing other projects' files: one module per format.

``torch_file`` reads PyTorch ``.pt``/``.pth`` state dicts without PyTorch, as untrusted input.
"""

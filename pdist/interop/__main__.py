"""``python -m pdist.interop import SOURCE WORKDIR [--source_config=...] [--source_flags=...] [--config.KEY=VALUE]``
``python -m pdist.interop export WORKDIR FOLDER``

Turns a foreign checkpoint into a pdist workdir (:mod:`pdist.interop.importer`), or a pdist workdir into a
diffusers folder (:mod:`pdist.interop.exporter`). Bad input is one sentence and exit status 2, with nothing
written.
"""

from __future__ import annotations

import argparse
import sys

from pdist.errors import InputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pdist.interop")
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="a foreign checkpoint -> a pdist workdir")
    imp.add_argument("source")
    imp.add_argument("workdir")
    imp.add_argument("--source_config", default=None)
    imp.add_argument("--source_flags", default=None)
    exp = sub.add_parser("export", help="a pdist workdir -> a diffusers folder (UNet2DModel, its sampler)")
    exp.add_argument("workdir")
    exp.add_argument("folder")
    args, rest = parser.parse_known_args(argv)
    if args.command == "export":
        if rest:
            print(f"error: {rest[0]!r} is not an option of export, which takes WORKDIR FOLDER.", file=sys.stderr)
            return 2
        from pdist.interop import exporter

        return exporter.main_export(args.workdir, args.folder)
    overrides = []
    for item in rest:
        if not (item.startswith("--config.") and "=" in item):
            print(f"error: {item!r} is not an option; use --source_config, --source_flags or --config.KEY=VALUE.",
                  file=sys.stderr)  # fmt: skip
            return 2
        key, value = item[len("--config.") :].split("=", 1)
        overrides.append((key, value))
    from pdist.interop import importer

    try:
        directory = importer.import_checkpoint(args.source, args.workdir, args.source_config, args.source_flags,
                                               overrides)  # fmt: skip
    except InputError as e:  # ConfigError is one
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"imported {args.source} into {directory}")
    print(f"load it with pdist.load({args.workdir!r}); it serves as --config.distill.teacher={args.workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

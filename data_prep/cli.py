"""`semantix-prep`: build the evaluation sets of docs/datasets.md, or verify a prepared one.

    semantix-prep coco_wikiart [--contents SRC] [--styles SRC] [--pairs 1000] ...
    semantix-prep appearance (--folder DIR | --coco-annotations JSON [--images SRC]) ...
    semantix-prep videos --videos DIR_OR_REPO [--styles SRC] [--clips 100] [--frames 16] ...
    semantix-prep verify MANIFEST [--root DIR]

A source (SRC) is a Hugging Face hub dataset id, or a local folder, archive or saved dataset (see
`data_prep.sources`). Every building command takes --out, --seed, --limit, --resolution and
--cache-dir, shows a progress bar, and resumes: running it again reuses the files already written
and verified by hash (`data_prep.common`). With --limit, a hub source is streamed and only its first
rows are fetched (`data_prep.sources.streamed_rows`), with a progress bar; without it, `datasets`
downloads the source (its own progress bars) and caches it. Exit status: 0 on success (skipped bad items included:
they are listed in source.json), 1 when `verify` finds a problem, 2 when a command cannot run.
"""

from __future__ import annotations

import argparse
import sys

from data_prep import appearance, coco_wikiart, verify, videos
from data_prep.common import PrepError

COMMANDS = {
    "coco_wikiart": (coco_wikiart, "COCO 2017 val x WikiArt pairs (1000) and the StyleID 20 x 40 set"),
    "appearance": (appearance, "same-domain structure/appearance pairs, from a folder or from COCO"),
    "videos": (videos, "clips of N frames, each with a WikiArt style reference"),
    "verify": (verify, "re-hash the files of a prepared manifest; report missing or altered files"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semantix-prep", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, summary) in COMMANDS.items():
        sub = commands.add_parser(
            name, help=summary, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    module, _ = COMMANDS[args.command]
    try:
        status = module.run(args)
    except PrepError as exc:
        print(f"semantix-prep {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"semantix-prep {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)


if __name__ == "__main__":
    main()

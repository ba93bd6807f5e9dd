"""`python -m scnet.weights`: download the ImageNet backbone files paper-scale runs start from.

    python -m scnet.weights fetch --all                       # every published backbone file
    python -m scnet.weights fetch --preset scnet_r50 --preset htc_x101_64x4d
    python -m scnet.weights list                              # where each file goes, and whether it is there

Files go to torch's hub cache (`$TORCH_HOME/hub/checkpoints/<published name>`), where training looks
for them; run this on a login node (compute nodes often have no network) with the same TORCH_HOME.
As torch.hub does, a download whose SHA-256 does not start with the digits in the file name is refused.
Exit status: 0 done, 1 a download failed, 2 bad usage.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from scnet.weights.published import PUBLISHED, PublishedWeights, published_for

EXIT_FAILED, EXIT_USAGE = 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scnet.weights", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download backbone files into the hub cache")
    which = fetch.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", action="append", metavar="P", help="a model preset (repeatable)")
    which.add_argument("--all", action="store_true", help="every published backbone file")
    commands.add_parser("list", help="each published file, its source and whether it is in the hub cache")
    return parser


def wanted_files(presets: Sequence[str] | None) -> list[PublishedWeights]:
    """The published files the presets start from (all of them when `presets` is None)."""
    if presets is None:
        return list(PUBLISHED.values())
    from scnet.presets import resolve_config

    files: dict[str, PublishedWeights] = {}
    for preset in presets:
        backbone = resolve_config(preset).backbone  # ConfigError names unknown presets
        published = published_for(backbone)
        if published is None:
            print(f"{preset}: backbone {backbone} starts from random weights (smoke preset); nothing to fetch",
                  file=sys.stderr)
            continue
        files[published.file_name] = published
    return list(files.values())


def fetch_file(published: PublishedWeights, download: Callable[..., None] | None = None) -> str:
    """Download one file unless a good copy is there; returns what happened, raises on failure."""
    from scnet.weights.backbone_init import hub_checkpoint_dir
    from scnet.weights.digest import file_sha256

    target = hub_checkpoint_dir() / published.file_name
    if target.is_file():
        if file_sha256(target).startswith(published.sha256_prefix):
            return f"present  {target}"
        raise RuntimeError(f"{target} exists but its SHA-256 does not start with {published.sha256_prefix} as "
                           "its name says (damaged or another file); delete it and fetch again")
    if download is None:
        from torch.hub import download_url_to_file as download
    target.parent.mkdir(parents=True, exist_ok=True)
    # torch.hub writes to a temporary file, checks the hash prefix, then renames: no half file remains.
    download(published.url, str(target), hash_prefix=published.sha256_prefix, progress=sys.stderr.isatty())
    return f"fetched  {target}  ({published.mmdet_name})"


def _target(published: PublishedWeights):
    from scnet.weights.backbone_init import hub_checkpoint_dir

    return hub_checkpoint_dir() / published.file_name


def list_files() -> None:
    from scnet.weights.backbone_init import hub_checkpoint_dir

    for published in PUBLISHED.values():
        target = hub_checkpoint_dir() / published.file_name
        state = "present" if target.is_file() else "missing"
        print(f"{state:8} {published.backbone:18} {published.mmdet_name:32} {target}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        list_files()
        return 0
    from scnet.config import ConfigError

    try:
        files = wanted_files(None if args.all else args.preset)
    except ConfigError as exc:
        print(f"error: --preset: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from scnet.records.files import OutputError, check_writable_dir
    from scnet.weights.backbone_init import hub_checkpoint_dir

    try:  # a file in the way of the hub folder is this machine's problem, not the network's
        check_writable_dir(hub_checkpoint_dir(), "the hub cache ($TORCH_HOME/hub/checkpoints)")
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    failed = 0
    for published in files:
        try:
            print(fetch_file(published))
        except Exception as exc:  # noqa: BLE001 - network, disk and hash errors: report each, go on
            failed += 1
            print(f"error: {failure_message(published, exc)}", file=sys.stderr)
    return EXIT_FAILED if failed else 0


def failure_message(published: PublishedWeights, exc: Exception) -> str:
    """What went wrong with one download, blaming the network only for network errors."""
    import urllib.error

    from scnet.messages import path_kind, shorten

    target = _target(published)
    if isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError)):
        return (f"{published.url}: {shorten(str(exc), 200)} (no network here? fetch it where there is, or copy "
                f"the file to {target})")
    if isinstance(exc, OSError):
        blocking = next((p for p in (target, *target.parents) if p.exists() or p.is_symlink()), None)
        kind = f"; {blocking} is {path_kind(blocking)}" if blocking is not None and not blocking.is_dir() else ""
        return (f"{target}: cannot be written ({exc.strerror or shorten(str(exc), 200)}{kind}); make "
                f"{target.parent} a writable folder (TORCH_HOME chooses where it is), then fetch again")
    return f"{published.url}: {shorten(str(exc), 300)}"

"""Command-line pieces shared by `python -m scnet.train`, `scnet.evaluate` and `scnet.predict`."""
from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import Any, Callable, NoReturn

from scnet.config import ConfigError
from scnet.engine.run_config import SCALES
from scnet.messages import printable

EXIT_USAGE = 2


def check_device(text: str) -> str:
    """A device this machine has: 'cpu', 'cuda' or 'cuda:N' (GPU N visible); else ConfigError."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {text} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return text
    if device.type != "cuda":
        raise ConfigError(f"--device {text}: this tool runs on cpu or cuda (cuda:N), not {device.type}")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {text}: no CUDA GPU is visible on this machine (torch.cuda.is_available() "
                          "is False); use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"--device {text}: this machine has {count} GPU(s), cuda:0 .. cuda:{count - 1}")
    return text


def device_arg(text: str) -> str:
    """argparse `type=` for --device: a usage error naming the option, before any work starts."""
    try:
        return check_device(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--device ")) from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are one `error:` line (exit 2), not a usage block of a dozen lines."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {one_line(message)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the input, an output path or this machine is not what the command
    needs", whose messages name the file or field and the fix: the command-line tools print them as
    one line and exit 2, without a traceback."""
    from scnet.checkpoints.loading import WeightsError
    from scnet.data.errors import DatasetError
    from scnet.engine.checkpoint import CheckpointError
    from scnet.engine.device import DeviceUnavailable
    from scnet.engine.run_lock import RunLockedError
    from scnet.image_io import ImageError
    from scnet.records.files import OutputError, RecordError
    from scnet.weights.backbone_init import BackboneWeightsError

    return (ConfigError, DatasetError, RecordError, OutputError, CheckpointError, WeightsError, ImageError,
            DeviceUnavailable, BackboneWeightsError, RunLockedError)


def one_line(exc: BaseException) -> str:
    """The message on one line. An error re-raised by a DataLoader worker carries the worker's
    traceback in its message; its last line is the original message."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith(("Error", "Exception")) \
            else last
    return printable(" ".join(text.split()), width=None)  # names from files may hold escape sequences


def interruptible(main: Callable[..., int]) -> Callable[..., int]:
    """Ctrl-C in a command that writes its output only at the end: one line and exit 130, not a
    traceback (the output is written atomically, so there is nothing half-written to clean up)."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            print("\ninterrupted: nothing was written; run the same command again", file=sys.stderr)
            return 130

    return wrapper


def report_user_error(exc: BaseException) -> int:
    print(f"error: {one_line(exc)}", file=sys.stderr)
    return EXIT_USAGE


def parse_flag(text: str) -> tuple[str, Any]:
    """'feature_relay=true' -> ('feature_relay', True); values are JSON, else plain strings."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected KEY=VALUE, e.g. --set feature_relay=true")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise argparse.ArgumentTypeError(f"--set {text!r}: empty key")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = {"True": True, "False": False, "None": None}.get(raw, raw)
    return key, value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="model preset, e.g. scnet_r50 or scnet_r18_smoke")
    parser.add_argument("--data", help="dataset root (COCO layout)")
    parser.add_argument("--scale", choices=SCALES, help="run scale (default: smoke for *_smoke "
                        "presets, else paper)")
    parser.add_argument("--set", dest="model_flags", action="append", type=parse_flag, default=[],
                        metavar="KEY=VALUE", help="model flag override (repeatable), e.g. --set feature_relay=false")
    parser.add_argument("--image-scale", type=int, nargs=2, metavar=("LONG", "SHORT"),
                        help="resize limits (default 1333 800 at paper scale, 256 192 at smoke scale)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="data loader processes per training process")
    parser.add_argument("--eval-split", help="split to evaluate (default: val)")
    parser.add_argument("--eval-max-images", type=int, help="evaluate only the first N images")
    parser.add_argument("--device", type=device_arg,
                        help="cpu, cuda or cuda:N (default: the GPU of this process if any)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def default_scale(preset: str) -> str:
    return "smoke" if preset.endswith("_smoke") else "paper"


def model_flags(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    for key, value in args.model_flags:
        if key in flags and flags[key] != value:
            raise ConfigError(f"--set {key} given twice with different values ({flags[key]!r}, {value!r})")
        flags[key] = value
    return flags

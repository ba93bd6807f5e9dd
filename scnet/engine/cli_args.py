"""Command-line pieces shared by `python -m scnet.train` and `python -m scnet.evaluate`."""
from __future__ import annotations

import argparse
import json
from typing import Any

from scnet.config import ConfigError


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
    parser.add_argument("--scale", choices=("smoke", "paper"), help="run scale (default: smoke for *_smoke "
                        "presets, else paper)")
    parser.add_argument("--set", dest="model_flags", action="append", type=parse_flag, default=[],
                        metavar="KEY=VALUE", help="model flag override (repeatable), e.g. --set feature_relay=false")
    parser.add_argument("--image-scale", type=int, nargs=2, metavar=("LONG", "SHORT"),
                        help="resize limits (default 1333 800 at paper scale, 256 192 at smoke scale)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="data loader processes per training process")
    parser.add_argument("--eval-split", help="split to evaluate (default: val)")
    parser.add_argument("--eval-max-images", type=int, help="evaluate only the first N images")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: the GPU of this process if any)")
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

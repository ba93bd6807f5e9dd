"""Data: COCO-format instance segmentation (COCO 2017 or the project's synthetic shapes), transforms, collation.

See docs/interfaces.md ("Data") for the contract the trainer and evaluator code against.
"""
from scnet.data.coco import CocoInstances, load_sample
from scnet.data.collate import collate
from scnet.data.errors import DatasetError
from scnet.data.sample_seeds import epoch_permutation, sample_generator
from scnet.data.synthetic import ensure_synthetic, generate_synthetic
from scnet.data.pipeline import build_transforms

__all__ = ["CocoInstances", "DatasetError", "build_transforms", "collate", "ensure_synthetic",
           "epoch_permutation", "generate_synthetic", "load_sample", "sample_generator"]

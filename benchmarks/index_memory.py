"""Resident memory of a training rank's dataset index on a COCO-sized annotation file (issue 11, item 9).

    python benchmarks/index_memory.py [--images 118287] [--instances 860001] [--workdir /tmp/coco-sized]

Writes a synthetic `instances_train2017.json` with train2017's counts (polygons of 6-34 vertices at
two decimals, as COCO's; about the size of the real file) and an image folder of empty files (the
dataset checks that the files exist; no pixel is read), then, in a fresh process per variant:
- `dict`: `CocoInstances` as built from pycocotools' index;
- `compact`: the same after `scnet.data.compact_index.compact_dataset` (what training uses).
For each: the rank's resident set after construction (VmRSS) and its peak (VmHWM), the index's own
size, and the private memory one forked DataLoader worker has copied after reading every sample's
annotations once (an epoch, without pixels) -- the pages that reference counting dirties.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_coco_sized(root: Path, images: int, instances: int, seed: int = 0) -> Path:
    """Stream a COCO-format train split with `images` images and `instances` polygon instances."""
    ann_path = root / "annotations" / "instances_train2017.json"
    if ann_path.exists():
        return ann_path
    rng = np.random.default_rng(seed)
    image_dir = root / "train2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    per_image = np.bincount(rng.integers(0, images, instances), minlength=images)
    partial = ann_path.with_suffix(".partial")
    with open(partial, "w", encoding="utf-8") as out:
        out.write('{"info":{"description":"COCO-sized synthetic index"},"licenses":[],"categories":[')
        out.write(",".join(json.dumps({"id": c, "name": f"class{c}", "supercategory": "thing"})
                           for c in range(1, 81)))
        out.write('],"images":[')
        for i in range(images):
            name = f"{i + 1:012d}.jpg"
            (image_dir / name).touch()
            out.write(("," if i else "") + json.dumps({"id": i + 1, "file_name": name, "width": 640, "height": 480,
                                                       "license": 1, "date_captured": "2013-11-14 16:28:13"}))
        out.write('],"annotations":[')
        ann_id = 0
        for i in range(images):
            for _ in range(per_image[i]):
                ann_id += 1
                x, y = rng.uniform(0, 500), rng.uniform(0, 360)
                w, h = rng.uniform(2, 140), rng.uniform(2, 120)
                vertices = int(rng.integers(6, 35))
                angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
                px = np.round(x + w / 2 + w / 2 * np.cos(angles), 2)
                py = np.round(y + h / 2 + h / 2 * np.sin(angles), 2)
                polygon = np.stack([px, py], 1).reshape(-1).tolist()
                ann = {"id": ann_id, "image_id": i + 1, "category_id": int(rng.integers(1, 81)),
                       "iscrowd": 0, "area": round(float(w * h * 0.7), 2),
                       "bbox": [round(float(x), 2), round(float(y), 2), round(float(w), 2), round(float(h), 2)],
                       "segmentation": [polygon]}
                out.write(("," if ann_id > 1 else "") + json.dumps(ann, separators=(",", ":")))
        out.write("]}")
    partial.rename(ann_path)
    return ann_path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _private_kib() -> int:
    total = 0
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total


def _read_every_index_entry(dataset) -> int:
    """What __getitem__ reads from the index for every sample, without decoding pixels."""
    count = 0
    for index in range(len(dataset)):
        dataset.image_info(index)
        count += len([dataset.coco.anns[i] for i in dataset._instance_ids[index]])
    return count


def measure(root: Path, variant: str) -> dict:
    """In this process: build the dataset (and compact it), fork a worker that reads an epoch."""
    from scnet.data import CocoInstances

    start = time.perf_counter()
    dataset = CocoInstances(root, split="train", transforms=None, semantic=None)
    index_bytes = None
    if variant == "compact":
        from scnet.data.compact_index import compact_dataset

        compact_dataset(dataset)
        index_bytes = dataset.coco.nbytes + dataset._instance_ids.nbytes + dataset._crowd_ids.nbytes
    built_s = time.perf_counter() - start
    rss, peak = _status_kib("VmRSS"), _status_kib("VmHWM")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # a DataLoader worker: forked from the rank, reads the index for an epoch
        os.close(read_fd)
        before = _private_kib()
        epoch_start = time.perf_counter()
        annotations = _read_every_index_entry(dataset)
        report = {"worker_private_mib": (_private_kib() - before) / 1024, "annotations_read": annotations,
                  "epoch_index_s": time.perf_counter() - epoch_start}
        os.write(write_fd, json.dumps(report).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        worker = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return {"variant": variant, "images": len(dataset), "rank_rss_mib": rss / 1024, "rank_peak_mib": peak / 1024,
            "index_mib": None if index_bytes is None else index_bytes / 2**20, "build_s": built_s, **worker}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=118_287)
    parser.add_argument("--instances", type=int, default=860_001)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/scnet-coco-sized"))
    parser.add_argument("--variant", choices=("dict", "compact"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = args.workdir / f"{args.images}x{args.instances}"
    if args.variant:
        print(json.dumps(measure(root, args.variant)))
        return 0
    start = time.perf_counter()
    ann_path = write_coco_sized(root, args.images, args.instances)
    print(f"{ann_path}: {ann_path.stat().st_size / 2**20:.0f} MiB ({time.perf_counter() - start:.0f} s)", flush=True)
    rows = []
    for variant in ("dict", "compact"):
        done = subprocess.run([sys.executable, __file__, "--images", str(args.images), "--instances",
                               str(args.instances), "--workdir", str(args.workdir), "--variant", variant],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("| index | images | rank RSS MiB | rank peak MiB | index arrays MiB | worker copied after an epoch MiB "
          "| build s | epoch of index reads s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        index = "-" if row["index_mib"] is None else f"{row['index_mib']:.0f}"
        print(f"| {row['variant']} | {row['images']} | {row['rank_rss_mib']:.0f} | {row['rank_peak_mib']:.0f} | "
              f"{index} | {row['worker_private_mib']:.0f} | {row['build_s']:.0f} | {row['epoch_index_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``suanli image ...`` and ``suanli gpus``: what this machine can run, without the network."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from p2p.errors import SuanliError


def _read_archive(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SuanliError(f"{path}: {exc.strerror}") from exc


def cmd_image_build_demo(args: argparse.Namespace) -> int:
    from sandbox.engine import connect
    from sandbox.images import DEFAULT_BUSYBOX, ensure_demo_image

    print(ensure_demo_image(connect(), args.busybox or DEFAULT_BUSYBOX))
    return 0


def cmd_image_load(args: argparse.Namespace) -> int:
    from sandbox.archive import read_digests
    from sandbox.engine import connect
    from sandbox.images import load_image_archive

    data = _read_archive(args.archive)
    digests = read_digests(data)
    expected_sha = args.sha256 or digests.archive_sha256
    if not expected_sha.startswith("sha256:"):
        expected_sha = "sha256:" + expected_sha
    image_id = args.id or digests.config_digest
    print(load_image_archive(connect(), data, archive_sha256=expected_sha, image_id=image_id))
    return 0


def cmd_image_inspect(args: argparse.Namespace) -> int:
    from sandbox.archive import read_digests

    data = _read_archive(args.archive)
    d = read_digests(data)
    print(json.dumps({"archive_sha256": d.archive_sha256, "config_digest": d.config_digest,
                      "manifest_digest": d.manifest_digest, "bytes": len(data),
                      "sha256_check": "sha256:" + hashlib.sha256(data).hexdigest() == d.archive_sha256}, indent=1))
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    from sandbox.gpus import gpu_inventory

    inventory = gpu_inventory()
    rows = [{"index": g.index, "uuid": g.uuid, "name": g.name, "memory_mib": (g.memory_total_bytes or 0) >> 20,
             "compute_capability": ".".join(map(str, g.compute_capability)) if g.compute_capability else None,
             "driver": g.driver_version, "cuda": g.cuda_driver_version, "power_limit_mw": g.power_limit_mw,
             "mig_mode": g.mig_mode} for g in inventory.gpus]
    if args.json:
        print(json.dumps({"gpus": rows, "reason": inventory.reason}, indent=1))
    elif not rows:
        print(f"no GPU offered: {inventory.reason}")
    else:
        for row in rows:
            print(f"{row['index']}: {row['name']} {row['memory_mib']} MiB cc {row['compute_capability']} "
                  f"driver {row['driver']} {row['uuid']}")
    return 0

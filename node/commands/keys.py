"""``suanli keys new`` and ``suanli keys show``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from node.paths import default_key_path
from p2p.identity import NodeKey, generate_key, load_key, save_key


def _print_key(key: NodeKey, path: Path, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"peer_id": key.peer_id, "public_key": key.public.hex(), "path": str(path)}))
    else:
        print(f"peer id     {key.peer_id}")
        print(f"public key  {key.public.hex()}")
        print(f"key file    {path}")


def cmd_new(args: argparse.Namespace) -> int:
    path = Path(args.out) if args.out else default_key_path()
    key = generate_key()
    save_key(key, path, overwrite=args.force)
    _print_key(key, path, args.json)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    path = Path(args.path) if args.path else default_key_path()
    _print_key(load_key(path), path, args.json)
    return 0

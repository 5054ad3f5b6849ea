"""Images for tests that need a real one the engine does not hold yet (shared by tests/sandbox and
tests/integration; the tests directory is on sys.path, as for registry_helpers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_from(client: Any, tmp_path: Path, base_image: str, name: str, data: bytes) -> str:
    """``docker build`` of ``FROM base_image`` plus one file ``/name`` holding ``data`` (no network); its id.
    The caller removes the image."""
    context = tmp_path / f"context-{name}"
    context.mkdir()
    (context / name).write_bytes(data)
    (context / "Dockerfile").write_text(f"FROM {base_image}\nCOPY {name} /{name}\n")
    image_id = None
    for message in client.api.build(path=str(context), rm=True, forcerm=True, decode=True):
        if message.get("error"):
            raise RuntimeError(message["error"])
        if (aux := message.get("aux")) and aux.get("ID"):
            image_id = aux["ID"]
    assert image_id is not None, "docker build reported no image id"
    return str(image_id)

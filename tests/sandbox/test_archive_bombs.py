"""Archives that would unpack to far more than they weigh: refused before any load (issue 13 C1/M2).

The provider's disk cost of a buyer's image is bounded by its unpacked size, so a compressed layer is
expanded (as a stream) to count it, and a sparse file, which the engine writes out in full, is refused.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import uuid

import docker.errors
import pytest

from p2p.errors import ImageError
from sandbox.archive import LayerEntry, image_archive, inspect_archive, layer_tar
from sandbox.images import load_image_archive


def _sparse_layer(real_size: int = 1 << 40) -> bytes:
    """One PAX 1.0 sparse file: 513 bytes in the tar, ``real_size`` bytes once written out."""
    sparse_map = b"1\n%d\n1\n" % (real_size - 1)
    info = tarfile.TarInfo("GNUSparseFile.0/big")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "big",
                        "GNU.sparse.realsize": str(real_size)}
    data = sparse_map.ljust(512, b"\0") + b"x"
    info.size = len(data)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zeros_layer(nbytes: int) -> bytes:
    return gzip.compress(layer_tar([LayerEntry("zeros", "file", 0o644, data=bytes(nbytes))]), mtime=0)


def test_compressed_layer_is_counted_unpacked():
    data, digests = image_archive(_zeros_layer(4 << 20), {}, architecture="amd64")
    assert len(data) < 64 << 10
    with pytest.raises(ImageError, match="too much disk once unpacked"):
        inspect_archive(io.BytesIO(data), max_unpacked_bytes=1 << 20)
    assert inspect_archive(io.BytesIO(data), max_unpacked_bytes=8 << 20).digests.config_digest == digests.config_digest


def test_sparse_file_is_refused():
    data, _ = image_archive(_sparse_layer(), {}, architecture="amd64")
    with pytest.raises(ImageError, match="sparse"):
        inspect_archive(io.BytesIO(data))


def test_a_layer_that_is_not_a_tar_is_refused():
    data, _ = image_archive(b"\x1f\x8b" + b"not gzip" * 100, {}, architecture="amd64")
    with pytest.raises(ImageError):
        inspect_archive(io.BytesIO(data))


@pytest.mark.docker
def test_a_sparse_bomb_never_reaches_the_engine(docker_client):
    layer = _sparse_layer()
    data, digests = image_archive(layer, {"Labels": {"t": uuid.uuid4().hex}}, architecture="amd64")
    with pytest.raises(ImageError, match="sparse"):
        load_image_archive(docker_client, data, archive_sha256=digests.archive_sha256,
                           image_id=digests.config_digest)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.api.inspect_image(digests.config_digest)

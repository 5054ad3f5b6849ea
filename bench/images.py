"""Images benchmark (issue 19): time to container start for a ~500 MB image, three ways, against Docker
itself, and the bytes that layer-aware shipping sends.

    .venv/bin/python bench/images.py [--trials 3] [--base-mib 450] [--top-mib 1] [--json]

Two images are built locally, nothing is fetched from the internet: FROM the demo image (busybox), a
base layer of ``--base-mib`` MiB of random bytes, then a top layer of ``--top-mib`` MiB of its own (A and
B share the base layer). Their ``docker save`` archives are kept in memory and on disk, A is pushed to a
real registry (Debian's ``docker-registry`` on 127.0.0.1, tests/registry_helpers.LocalRegistry), and the
images are removed from the engine. Each case runs a real provider (node.provider.open_provider, a fresh
data directory: empty image cache and layer store) and a real buyer host in this process (p2p.testing),
negotiates, and times ``node.buyer_job.run_job`` from its call to the buyer's status ``running``
(BuyerHooks.on_status):

1. pull: the job names REGISTRY/suanli/bench@sha256:... (image A); the provider pulls it by digest.
   Against ``docker pull REF`` + ``docker run -d REF sleep 600``.
2. whole archive: image B's archive goes over the job stream in full (the layer store is empty).
   Against ``docker load -i B.tar`` + ``docker run -d``.
3. layer-aware: a first job ships A (untimed; it fills the provider's layer store, and A stays in the
   engine as the provider's cache keeps it), then B's job is timed: only B's own layer goes.
   Against ``docker load -i B.tar`` + ``docker run -d`` with A already loaded (the engine then holds
   the base layer too).

``docker run -d`` returns once the container is running, the same end point as the buyer's ``running``
(``docker run --rm IMAGE true`` would add the container's exit and removal to Docker's side). Beside
the figures, where our time goes: when each status first reached the buyer, and when the image's last
byte went ("image sent"). Every trial starts cold: the images are removed from the engine between
cases. The median of ``--trials`` is printed. Targets (issue 19): a pull costs <= 10 % over docker pull
+ docker run; the layer-aware case sends only the missing layers' bytes plus <= 1 % (bytes from
BuyerHooks.on_progress; "missing layers" are the tar members of B's layers that A lacks). Not timed on
our side: the manifest check before the bid (the provider fetches the manifest while negotiating;
``docker pull`` counts its own). Everything created is removed at the end: images, containers, the
registry and its storage, the temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path; the tests' registry helper is needed.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))

import docker.errors  # noqa: E402
import trio  # noqa: E402
from registry_helpers import LocalRegistry  # noqa: E402

from market.service import negotiate_with, now_ms  # noqa: E402
from node.buyer_job import BuyerHooks, archive_layers, run_job  # noqa: E402
from node.config import ImageSettings  # noqa: E402
from node.provider import open_provider  # noqa: E402
from node.testing import local_setup, make_proposal  # noqa: E402
from p2p.envelope import sign_record  # noqa: E402
from p2p.identity import generate_key  # noqa: E402
from p2p.market_records import JobSpec  # noqa: E402
from p2p.testing import loopback_config, open_host  # noqa: E402
from sandbox.archive import read_digests  # noqa: E402
from sandbox.engine import connect  # noqa: E402
from sandbox.images import ensure_demo_image  # noqa: E402

MIB = 1 << 20
COMMAND = ("sh", "-c", "true")
DOCKER_TIMEOUT_S = 600  # every docker CLI call is bounded
JOB_TIMEOUT_S = 600
PULL_TARGET = 0.10  # a pull costs <= 10 % over docker pull + docker run
BYTES_TARGET = 0.01  # layer-aware: the missing layers' bytes plus <= 1 %
REPO = "suanli/bench"


@dataclass
class Built:
    name: str
    image_id: str
    archive: bytes
    path: Path
    layers: tuple[bytes, ...]


@dataclass
class Results:
    ours_s: dict[str, list[float]] = field(default_factory=lambda: {"pull": [], "whole": [], "layers": []})
    docker_s: dict[str, list[float]] = field(default_factory=lambda: {"pull": [], "whole": [], "layers": []})
    phases_s: dict[str, list[dict[str, float]]] = field(default_factory=lambda: {"pull": [], "whole": [],
                                                                                  "layers": []})
    sent_whole_bytes: list[int] = field(default_factory=list)
    sent_layers_bytes: list[int] = field(default_factory=list)


def docker_cli(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=DOCKER_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:2])} failed: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


def remove_images(client: Any, *image_ids: str) -> None:
    for image_id in image_ids:
        try:
            client.api.remove_image(image_id, force=True)
        except docker.errors.NotFound:
            pass


def build(client: Any, root: Path, parent: str, name: str, nbytes: int) -> str:
    """An image FROM ``parent`` plus one file of ``nbytes`` random bytes (its own layer): its id."""
    context = root / f"context-{name}"
    context.mkdir()
    with open(context / name, "wb") as out:
        for _ in range(nbytes // MIB):
            out.write(os.urandom(MIB))
        out.write(os.urandom(nbytes % MIB))
    (context / "Dockerfile").write_text(f"FROM {parent}\nCOPY {name} /{name}\n")
    image_id = None
    try:
        for message in client.api.build(path=str(context), rm=True, forcerm=True, decode=True,
                                        timeout=DOCKER_TIMEOUT_S):
            if message.get("error"):
                raise RuntimeError(f"docker build {name}: {message['error']}")
            if (aux := message.get("aux")) and aux.get("ID"):
                image_id = aux["ID"]
    finally:
        shutil.rmtree(context, ignore_errors=True)
    if image_id is None:
        raise RuntimeError(f"docker build {name} reported no image id")
    return str(image_id)


def saved(client: Any, root: Path, name: str, image_id: str) -> Built:
    archive = b"".join(client.api.get_image(image_id))
    path = root / f"{name}.tar"
    path.write_bytes(archive)
    return Built(name, image_id, archive, path, archive_layers(archive))


def missing_layer_bytes(archive: bytes, held: tuple[bytes, ...]) -> int:
    """The tar members' bytes of the archive's layers that are not in ``held`` (diff ids, in the order
    of manifest.json's Layers, as archive_layers reads them)."""
    import io

    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        paths = manifest[0]["Layers"]
        sizes = [tar.getmember(p).size for p in paths]
    layers = archive_layers(archive)
    assert len(layers) == len(sizes)
    return sum(size for size, diff in zip(sizes, layers, strict=True) if diff not in held)


# -- our side: a provider and a buyer in this process -------------------------------------------------


async def timed_job(root: Path, registry_host: str, image: str, built: Built | None,
                    first: Built | None = None) -> tuple[float, int, dict[str, float]]:
    """A fresh provider; (seconds from run_job's call to ``running``, image bytes sent) for one job
    naming ``image`` (a registry reference, or ``built``'s id with its archive). ``first``: an untimed
    job that ships that archive before, to fill the provider's layer store."""
    buyer = generate_key()
    settings = ImageSettings(allowed_registries=(registry_host,))
    setup = replace(local_setup(root / f"provider-{uuid.uuid4().hex[:8]}", generate_key()), images=settings)
    async with open_provider(setup) as runtime, \
            open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as host:
        from settlement.astore import open_store

        async with open_store(root / f"buyer-{uuid.uuid4().hex[:8]}.db") as store:
            if first is not None:
                await one_job(runtime, host, buyer, store, first.image_id, first)
            return await one_job(runtime, host, buyer, store, image, built)


async def one_job(runtime: Any, host: Any, buyer: Any, store: Any, image: str,
                  built: Built | None) -> tuple[float, int, dict[str, float]]:
    """(seconds to ``running``, image bytes sent, the seconds at which each status first came and the
    image's last byte went ("image sent"))."""
    base = make_proposal(buyer, runtime.offer, image, list(COMMAND)).record
    if built is not None:
        sha = bytes.fromhex(read_digests(built.archive).archive_sha256.removeprefix("sha256:"))
        base = replace(base, job=JobSpec(image, sha, base.job.command, {}, None))
    deal = await negotiate_with(host, runtime.setup.key.peer_id, buyer, sign_record(base, buyer))
    await store.put_agreement(deal.agreement)
    sent = [0]
    seen: dict[str, float] = {}

    def on_status(phase: str, detail: str) -> None:
        seen.setdefault(phase, time.perf_counter() - start)

    def on_progress(what: str, done: int, total: int) -> None:
        if what == "image":
            sent[0] = total
            if done == total:
                seen.setdefault("image sent", time.perf_counter() - start)

    hooks = BuyerHooks(on_status=on_status, on_progress=on_progress)
    start = time.perf_counter()
    with trio.fail_after(JOB_TIMEOUT_S):
        outcome = await run_job(host, buyer, store, deal, b"", built.archive if built else None, hooks,
                                trio.Event(), now_ms(), image_layers=built.layers if built else ())
    if outcome.exit_code != 0 or "running" not in seen:
        raise RuntimeError(f"the job on {image[:40]} did not run: exit {outcome.exit_code}, {outcome.reason}")
    return seen["running"], sent[0], seen


# -- Docker's side -------------------------------------------------------------------------------------


def docker_started(prepare: list[str], image: str) -> float:
    """Seconds for ``docker <prepare>`` then ``docker run -d`` of ``image`` (returns once running)."""
    name = f"suanli-bench-images-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    docker_cli(*prepare)
    try:
        docker_cli("run", "-d", "--name", name, "--network", "none", image, "sleep", "600")
        return time.perf_counter() - start
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=DOCKER_TIMEOUT_S)


# -- the run -------------------------------------------------------------------------------------------


def trial(client: Any, root: Path, registry: LocalRegistry, ref: str, a: Built, b: Built,
          results: Results) -> None:
    cold = (a.image_id, b.image_id)
    remove_images(client, *cold)
    # 1. pull by digest
    seconds, _, seen = trio.run(timed_job, root, registry.host, ref, None)
    results.ours_s["pull"].append(seconds)
    results.phases_s["pull"].append(seen)
    remove_images(client, *cold)
    results.docker_s["pull"].append(docker_started(["pull", "-q", ref], ref))
    remove_images(client, *cold)
    # 2. the whole archive
    seconds, sent, seen = trio.run(timed_job, root, registry.host, b.image_id, b)
    results.ours_s["whole"].append(seconds)
    results.phases_s["whole"].append(seen)
    results.sent_whole_bytes.append(sent)
    remove_images(client, *cold)
    results.docker_s["whole"].append(docker_started(["load", "-q", "-i", str(b.path)], b.image_id))
    remove_images(client, *cold)
    # 3. layer-aware, A shipped first
    seconds, sent, seen = trio.run(timed_job, root, registry.host, b.image_id, b, a)
    results.ours_s["layers"].append(seconds)
    results.phases_s["layers"].append(seen)
    results.sent_layers_bytes.append(sent)
    remove_images(client, *cold)
    docker_cli("load", "-q", "-i", str(a.path))
    results.docker_s["layers"].append(docker_started(["load", "-q", "-i", str(b.path)], b.image_id))
    remove_images(client, *cold)


def report(results: Results, a: Built, b: Built, missing: int, trials: int, as_json: bool) -> None:
    rows = [("pull", "pull by digest from the registry", "docker pull + run"),
            ("whole", "archive shipped whole", "docker load + run"),
            ("layers", "archive, base layer cached", "docker load + run (A loaded)")]
    print(f"\ntime to container start, {trials} trials, median [min..max] s "
          f"(image B {len(b.archive) / 1e6:.1f} MB archive, A {len(a.archive) / 1e6:.1f} MB):")
    print(f"  {'case':34} {'suanli':>22} {'docker':>22}  {'overhead':>9}  compared with")
    doc: dict[str, Any] = {"trials": trials, "archive_bytes": {"A": len(a.archive), "B": len(b.archive)},
                           "cases": {}}
    for key, label, against in rows:
        ours, theirs = results.ours_s[key], results.docker_s[key]
        o, t = statistics.median(ours), statistics.median(theirs)
        overhead = o / t - 1
        target = f"  (target <= +{PULL_TARGET:.0%})" if key == "pull" else ""
        print(f"  {label:34} {o:7.2f} [{min(ours):5.2f}..{max(ours):6.2f}] {t:7.2f} "
              f"[{min(theirs):5.2f}..{max(theirs):6.2f}]  {overhead:+8.1%}  {against}{target}")
        doc["cases"][key] = {"suanli_s": ours, "docker_s": theirs, "suanli_median_s": o, "docker_median_s": t,
                             "overhead": overhead}
    print("\nwhere our time goes (median s from run_job's call at which each status first came):")
    for key, label, _ in rows:
        runs = results.phases_s[key]
        names = sorted({n for seen in runs for n in seen}, key=lambda n: statistics.median(
            [seen[n] for seen in runs if n in seen]))
        steps = ", ".join(f"{n} {statistics.median([seen[n] for seen in runs if n in seen]):.2f}" for n in names)
        print(f"  {label:34} {steps}")
    doc["phases_s"] = results.phases_s
    sent = statistics.median(results.sent_layers_bytes)
    extra = sent / missing - 1
    print("\nimage bytes sent (BuyerHooks.on_progress), median:")
    print(f"  whole archive          {statistics.median(results.sent_whole_bytes):14,.0f}")
    print(f"  layer-aware            {sent:14,.0f}")
    print(f"  missing layers' bytes  {missing:14,}  -> layer-aware sends {sent - missing:+,.0f} bytes, "
          f"{extra:+.2%} over them (target <= +{BYTES_TARGET:.0%}); {sent / len(b.archive):.2%} of the whole archive")
    pull_ok = doc["cases"]["pull"]["overhead"] <= PULL_TARGET
    print(f"\ntargets: pull {'met' if pull_ok else 'MISSED'}; layer-aware bytes "
          f"{'met' if extra <= BYTES_TARGET else 'MISSED'}")
    doc["bytes"] = {"whole": results.sent_whole_bytes, "layer_aware": results.sent_layers_bytes,
                    "missing_layers": missing, "layer_aware_over_missing": extra}
    doc["targets_met"] = {"pull": pull_ok, "layer_aware_bytes": extra <= BYTES_TARGET}
    if as_json:
        print(json.dumps(doc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--base-mib", type=int, default=450, help="the shared base layer, MiB of random bytes")
    parser.add_argument("--top-mib", type=int, default=1, help="each image's own top layer, MiB")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()

    client = connect()
    demo = ensure_demo_image(client)
    version = client.version()
    info = client.info()
    print(f"engine {version.get('Version')} ({info.get('Driver')}), {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
          f"demo image {demo[:19]}…")
    root = Path(tempfile.mkdtemp(prefix="suanli-bench-images-"))
    created: list[str] = []
    registry = LocalRegistry(root / "registry")
    (root / "registry").mkdir()
    try:
        tag = uuid.uuid4().hex[:8]
        t = time.perf_counter()
        base_id = build(client, root, demo, f"base{tag}", args.base_mib * MIB)
        created.append(base_id)
        ids = {name: build(client, root, base_id, f"{name}{tag}", args.top_mib * MIB) for name in ("a", "b")}
        created += ids.values()
        a, b = (saved(client, root, name, ids[name]) for name in ("a", "b"))
        remove_images(client, *reversed(created))
        missing = missing_layer_bytes(b.archive, a.layers)
        print(f"built and saved A and B in {time.perf_counter() - t:.0f} s "
              f"({len(b.layers)} layers each, {len(set(a.layers) & set(b.layers))} shared)")
        registry.start()
        t = time.perf_counter()
        client.images.load(a.archive)
        client.api.tag(a.image_id, f"suanli-bench/images-a:{tag}")  # a name of its own (registry.push)
        digest = registry.push(client, a.image_id, REPO)
        remove_images(client, a.image_id)
        ref = f"{registry.host}/{REPO}@{digest}"
        print(f"pushed A to {registry.host} in {time.perf_counter() - t:.0f} s; trials:", end="", flush=True)
        results = Results()
        for i in range(args.trials):
            trial(client, root, registry, ref, a, b, results)
            print(f" {i + 1}", end="", flush=True)
        print()
        report(results, a, b, missing, args.trials, args.json)
    finally:
        registry.stop()
        try:
            remove_images(client, *reversed(created))  # children before their parent
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

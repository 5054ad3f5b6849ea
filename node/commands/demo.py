"""``suanli demo``: a whole Suanli network on this machine, one real job, and the audit.

Builds the busybox demo image if missing, starts a bootstrap node and N providers as separate processes
on 127.0.0.1 (temporary data directories), runs a job through ``suanli run`` (it reads an input and
writes an output), shows its live output and the receipts as they are co-signed, audits both sides'
databases, and shuts everything down. Exit 0 only when the job ran and every database audits clean.

``--image python`` runs a real Python workload instead: the Debian python3 image (sandbox.pyimage, built
with mmdebstrap or taken from its cache) and examples/wordstats, whose script and sample texts are the
job's inputs; its report.json and top_words.csv come back as outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from p2p.errors import SuanliError

DEFAULT_JOB = ["sh", "-c", 'echo "hello from a Suanli sandbox: $(id -u) $(uname -m)"; '
               'echo "input: $(wc -w < /io/in/words.txt) words"; '
               'for i in 1 2 3; do echo "working $i/3"; sleep 1; done; '
               'tr a-z A-Z < /io/in/words.txt > /io/out/WORDS.txt; echo "wrote /io/out/WORDS.txt"']
EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "wordstats"
PYTHON_JOB = ["python3", "/io/in/wordstats.py"]
PROVIDER_CONFIG = """\
data_dir = "{data_dir}"
listen = ["/ip4/127.0.0.1/tcp/0"]
bootstrap = ["{bootstrap}"]

[prices]
cpu_core_micros_per_s = {cpu_price}
memory_gib_micros_per_s = 10

[limits]
max_duration_s = 600
max_concurrent_jobs = 2
cpu_millis = 1000
memory_mib = 1024

[receipts]
interval_ms = 1000
countersign_timeout_ms = 3000
grace_ms = 5000
exposure_cap_micros = 2000
"""


def _suanli() -> list[str]:
    return [sys.executable, "-m", "node.cli"]


class Processes:
    """Child processes that are always stopped (SIGTERM, then SIGKILL) when the demo ends."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[str]]] = []

    def start(self, name: str, args: list[str], log_path: Path) -> subprocess.Popen[str]:
        # 0600 whatever the umask (node.paths L3): a node's log may name jobs, peers and paths
        log = os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w")
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def stop_all(self, timeout_s: float = 40) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            codes[name] = proc.returncode
        return codes


def _read_json_line(proc: subprocess.Popen[str], what: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SuanliError(f"{what} exited before it was ready (exit code {proc.poll()})")
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    raise SuanliError(f"{what} was not ready within {timeout_s:.0f} s")


def why_failed(run_code: int, findings: int, agreements: int) -> str:
    """One line for a failed demo (issue 17 item 11: it said only "FAILED")."""
    from node.exitcodes import MEANINGS

    if run_code != 0:
        meaning = MEANINGS.get(run_code, "the job's own exit code")
        return f"suanli run exited {run_code} ({meaning}; its lines are above)"
    if not agreements:
        return "no agreement was recorded in the databases"
    return f"the audit found {findings} problem(s) (listed above)"


def cmd_demo(args: argparse.Namespace) -> int:
    from sandbox.engine import connect
    from sandbox.images import ensure_demo_image
    from settlement.audit import audit, read_inputs

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    python = getattr(args, "image", "busybox") == "python"
    command = command or (PYTHON_JOB if python else DEFAULT_JOB)
    quiet = args.json
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    if python and not (EXAMPLE_DIR / "wordstats.py").is_file():
        raise SuanliError(f"demo --image python: the example is missing ({EXAMPLE_DIR / 'wordstats.py'})")
    client = connect()
    try:
        if python:
            from sandbox.pyimage import ensure_python_image
            say("demo: the python image (built with mmdebstrap the first time, 20-60 s; cached after)")
            image = ensure_python_image(client)
        else:
            image = ensure_demo_image(client)
    finally:
        client.close()
    say(f"demo: image {image} ({'Debian python3' if python else 'busybox'}, built locally)")
    root = Path(tempfile.mkdtemp(prefix="suanli-demo-"))
    procs = Processes()
    summary: dict[str, Any] = {"ok": False, "root": str(root), "image": image}
    try:
        boot_key = root / "bootstrap.key"
        subprocess.run([*_suanli(), "keys", "new", "--out", str(boot_key)], check=True, capture_output=True)
        boot = procs.start("bootstrap", [*_suanli(), "bootstrap", "--key", str(boot_key), "--listen",
                                         "/ip4/127.0.0.1/tcp/0", "--json"], root / "bootstrap.log")
        boot_addr = _read_json_line(boot, "the bootstrap node")["addrs"][0]
        say(f"demo: bootstrap node at {boot_addr}")
        providers = []
        for i in range(args.providers):
            data_dir = root / f"provider{i + 1}"
            cfg = root / f"provider{i + 1}.toml"
            cfg.write_text(PROVIDER_CONFIG.format(data_dir=data_dir, bootstrap=boot_addr, cpu_price=40 + 10 * i))
            proc = procs.start(f"provider{i + 1}", [*_suanli(), "provide", "--config", str(cfg), "--json"],
                               root / f"provider{i + 1}.log")
            providers.append((proc, data_dir))
        for i, (proc, _) in enumerate(providers):
            ready = _read_json_line(proc, f"provider {i + 1}")
            say(f"demo: provider {i + 1} {ready['peer_id']} ready ({ready['cpu_millis'] / 1000:g} CPU, "
                f"{ready['memory_mib']} MiB, {ready['gpus']} GPU)")
        inputs, outputs, buyer_home = root / "in", root / "out", root / "buyer"
        if python:
            shutil.copytree(EXAMPLE_DIR, inputs, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            inputs.mkdir()
            (inputs / "words.txt").write_text("the quick brown fox jumps over the lazy dog\n")
        run_args = [*_suanli(), "run", "--bootstrap", boot_addr, "--local", "--image", image, "--input", str(inputs),
                    "--output", str(outputs), "--data-dir", str(buyer_home), "--max-price", "1000",
                    "--cpus", "0.5", "--memory", "256m", "--wait", "4", "--show-receipts"]
        if quiet:
            run_args.append("--json")
        elif args.verbose:
            run_args.append("--verbose")
        run_args += ["--", *command]
        say(f"demo: the buyer runs {' '.join(command)!r} on the network")
        say("-" * 72)
        started = time.monotonic()
        buyer = subprocess.run(run_args, stdout=subprocess.PIPE if quiet else None, text=True, timeout=900)
        say("-" * 72)
        summary["job_exit_code"] = buyer.returncode
        summary["job_seconds"] = round(time.monotonic() - started, 3)
        if quiet and buyer.stdout:
            summary["run"] = json.loads(buyer.stdout.strip().splitlines()[-1])
        codes = procs.stop_all()
        summary["processes"] = {"bootstrap": 1, "providers": args.providers, "exit_codes": codes}
        dbs = [buyer_home / "buyer.db"] + [d / "node.db" for _, d in providers if (d / "node.db").exists()]
        results = audit(read_inputs([p for p in dbs if p.exists()]))
        findings = sum(len(r.report.findings) for r in results)
        say(f"demo: audit of {len(dbs)} database(s): {len(results)} agreement(s), {findings} finding(s)")
        for r in results:
            rep = r.report
            say(f"  agreement {rep.agreement_id.hex()[:16]}: {rep.state}, billed {rep.billed_ms / 1000:.3f} s, "
                f"{rep.amount_micros} micro-credits, {rep.receipts} receipts, "
                f"{'ok' if rep.ok else 'FINDINGS: ' + '; '.join(f.describe() for f in rep.findings)}")
        if outputs.exists():
            for f in sorted(outputs.rglob("*")):
                if f.is_file():
                    say(f"demo: output {f.relative_to(outputs)}: {f.read_text(errors='replace').strip()[:200]}")
        rep = results[0].report if results else None
        summary.update({
            "audit": "ok" if findings == 0 and results else "findings", "agreements": len(results),
            "findings": findings, "billed_ms": rep.billed_ms if rep else 0, "amount_micros": rep.amount_micros if rep
            else 0, "receipts": rep.receipts if rep else 0, "databases": [str(p) for p in dbs],
        })
        summary["ok"] = buyer.returncode == 0 and findings == 0 and bool(results)
        if not summary["ok"]:
            summary["error"] = why_failed(buyer.returncode, findings, len(results))
    except SuanliError as exc:
        summary["error"] = str(exc)  # a node that did not start: its log is kept under root
    finally:
        procs.stop_all()
        if args.clean and summary.get("ok"):
            shutil.rmtree(root, ignore_errors=True)
            summary["root"] = None
    if quiet:
        print(json.dumps(summary))
    else:
        where = f"; keys, logs and databases are in {root}" if summary.get("root") else ""
        print(f"demo: {'OK' if summary['ok'] else 'FAILED: ' + summary['error']}{where}")
    return 0 if summary["ok"] else 1

"""L3 and M4 through the real CLI: a real job in Docker, run with ``--env SECRET=...`` under umask 0.

Checked: both data directories are 0700, both databases (and their -wal/-shm) and an exported bundle
are 0600, and no file readable by others holds the secret; ``--output`` refuses a non-empty directory
before joining, and with ``--force`` a job's symlink and a symlink in the destination are never followed.
Every process is stopped in teardown (cli_helpers Rule 1); every wait is bounded.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import cli_helpers as _h
import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CONFIG = """\
data_dir = "{data_dir}"
listen = ["/ip4/127.0.0.1/tcp/0"]
bootstrap = ["{bootstrap}"]

[prices]
cpu_core_micros_per_s = 40

[limits]
max_duration_s = 600
cpu_millis = 1000
memory_mib = 512
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _readable_by_others(path: Path, root: Path) -> bool:
    """Would another user read ``path`` were ``root`` itself open to all (pytest's tmp dirs are 0700)?"""
    if not _mode(path) & stat.S_IROTH:
        return False
    return all(_mode(d) & stat.S_IXOTH for d in path.parents if d != root and root in d.parents)


def test_env_secrets_stay_in_private_files_and_outputs_follow_no_symlink(tmp_path, demo_image):
    secret = f"SECRET-{secrets.token_hex(12)}"
    procs = _h.Processes()
    old_umask = os.umask(0)  # the children inherit it: nothing may rely on the usual 022
    try:
        boot = _h.start_bootstrap(procs, tmp_path)
        provider_dir, buyer_dir = tmp_path / "provider", tmp_path / "buyer"
        config = tmp_path / "provider.toml"
        config.write_text(CONFIG.format(data_dir=provider_dir, bootstrap=boot))
        provider = procs.start("provider", [*_h.suanli(), "provide", "--config", str(config), "--json"])
        assert provider.json_line("the provider ready", 60)["event"] == "ready"

        out, outside = tmp_path / "out", tmp_path / "outside"
        out.mkdir()
        outside.mkdir()
        (outside / "victim.txt").write_text("precious")
        (out / "keep.txt").write_text("mine")
        (out / "sub").symlink_to(outside, target_is_directory=True)
        run = [*_h.suanli(), "run", "--bootstrap", boot, "--local", "--no-agent", "--image", demo_image,
               "--data-dir", str(buyer_dir), "--max-price", "1000", "--cpus", "0.5", "--memory", "64m",
               "--max-duration", "120", "--wait", "5", "--env", f"SECRET={secret}", "--output", str(out)]
        job = ["sh", "-c", 'echo "$SECRET" | wc -c > /io/out/result.txt; echo theirs > /io/out/keep.txt; '
               "mkdir /io/out/sub; echo pwned > /io/out/sub/victim.txt; ln -s /etc/passwd /io/out/link"]

        refused = _h.run_cli(*run[3:], "--", *job)  # no --force: refused before joining, nothing run
        assert refused.returncode == 125 and refused.stderr.count("\n") == 1, refused.stderr
        assert "not empty" in refused.stderr and "--force" in refused.stderr

        buyer = procs.start("buyer", [*run, "--force", "--", *job])
        assert buyer.wait_exit(180) == 0, buyer.tail()
        notes = "\n".join(buyer.stderr_lines("not written"))
        assert "'sub/victim.txt' not written" in notes, buyer.tail()
        assert (outside / "victim.txt").read_text() == "precious" and sorted(os.listdir(outside)) == ["victim.txt"]
        assert (out / "result.txt").read_text().strip() == str(len(secret) + 1)  # the job saw the secret
        assert (out / "keep.txt").read_text() == "theirs\n"  # --force replaced it
        assert not (out / "link").is_symlink()

        bundle = tmp_path / "exports" / "buyer.bundle"
        done = _h.run_cli("export", "--db", str(buyer_dir / "buyer.db"), "--out", str(bundle))
        assert done.returncode == 0, done.stderr
        provider.stop()

        assert _mode(buyer_dir) == 0o700 and _mode(provider_dir) == 0o700
        for db in (buyer_dir / "buyer.db", provider_dir / "node.db"):
            for path in [db, *(db.with_name(db.name + s) for s in ("-wal", "-shm"))]:
                if path.exists():
                    assert _mode(path) == 0o600, path
        assert _mode(bundle) == 0o600
        holders = [p for p in tmp_path.rglob("*")
                   if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes()]
        assert bundle in holders and any(p.parent == buyer_dir for p in holders)  # it is kept, as --help says
        assert any(p.parent == provider_dir for p in holders)
        assert [p for p in holders if _readable_by_others(p, tmp_path)] == []
    finally:
        os.umask(old_umask)
        procs.stop_all()

"""Provider configuration: the example loads; every mistake is one line naming the key."""

from __future__ import annotations

import os
import re

import pytest

from node.config import EXAMPLE, load_config, write_example
from p2p.errors import ConfigError


def test_example_config_loads(tmp_path):
    path = write_example(tmp_path / "provider.toml")
    cfg = load_config(path)
    assert cfg.terms.prices.cpu_core_micros_per_s == 50 and cfg.terms.receipts.interval_ms == 1000
    assert cfg.listen == ("/ip4/0.0.0.0/tcp/0",) and cfg.bootstrap == () and cfg.runtime is None
    assert cfg.key_path.name == "node.key"
    assert cfg.images.pull and cfg.images.allowed_registries == () and cfg.images.cache_mib == 10240
    with pytest.raises(ConfigError, match="already exists"):
        write_example(path)


@pytest.mark.parametrize("edit, key", [
    (("cpu_core_micros_per_s = 50", "cpu_core_micros_per_s = -3"), "prices.cpu_core_micros_per_s"),
    (("cpu_core_micros_per_s = 50", "cpu_core_micros_per_s = 1.5"), "prices.cpu_core_micros_per_s"),
    (("max_duration_s = 3600", "max_duration_s = 0"), "limits.max_duration_s"),
    (("interval_ms = 1000", "interval_ms = 10"), "receipts.interval_ms"),
    (("allowed_images = []", 'allowed_images = ["busybox:latest"]'), "limits.allowed_images"),
    (("bootstrap = []", 'bootstrap = ["/ip4/127.0.0.1/tcp/1"]'), "bootstrap"),
    (('listen = ["/ip4/0.0.0.0/tcp/0"]', 'listen = ["0.0.0.0:4001"]'), "listen"),
    (("[sandbox]", "[sandbox]\ncolour = 1"), "sandbox.colour"),
    (("[limits]", "[limit]\nx = 1\n[limits]"), "limit"),
    (("pull = true", 'pull = "yes"'), "images.pull"),
    (("allowed_registries = []", 'allowed_registries = ["https://ghcr.io/"]'), "images.allowed_registries"),
    (("allowed_registries = []", 'allowed_registries = "ghcr.io"'), "images.allowed_registries"),
    (("# \"NVIDIA GeForce RTX 4090\" = 600", '"NVIDIA GeForce RTX 4090" = "600"'),
     "prices.gpu_micros_per_s.NVIDIA GeForce RTX 4090"),
])
def test_mistakes_name_the_key(tmp_path, edit, key):
    old, new = edit
    assert old in EXAMPLE
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f": {key}: " in message and "\n" not in message


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[prices\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="--init-config"):
        load_config(tmp_path / "none.toml")


# L6: every whole-number setting has a range, written beside it in EXAMPLE, and a value outside it is one
# line naming the key and the range, through the real `suanli provide --config` entry point.

def _example_ranges(tmp_path) -> dict[str, tuple[int, int]]:
    path = tmp_path / "example.toml"
    path.write_text(EXAMPLE.replace('# "NVIDIA GeForce RTX 4090" = 600', '"Test GPU" = 600'))
    ranges = load_config(path).ranges
    assert "prices.gpu_micros_per_s.*" in ranges and "limits.offer_ttl_s" in ranges
    return ranges


def _with_value(key: str, value: str, home) -> str:  # noqa: ANN001
    """EXAMPLE with ``key`` (``section.name``) set to the TOML literal ``value``, its data under ``home``
    (were the value accepted, the provider would start there, never in the real home)."""
    doc = EXAMPLE.replace('data_dir = "~/.local/share/suanli"', f'data_dir = "{home}"')
    if key == "prices.gpu_micros_per_s.*":
        return doc.replace('# "NVIDIA GeForce RTX 4090" = 600', f'"Test GPU" = {value}')
    section, name = key.split(".", 1)
    pattern = re.compile(rf"^{re.escape(name)} = \S+", re.M)
    if pattern.search(doc):
        return pattern.sub(f"{name} = {value}", doc, count=1)
    return doc.replace(f"[{section}]\n", f"[{section}]\n{name} = {value}\n", 1)


def _bad_values(lo: int, hi: int) -> list[str]:
    values = {str(lo - 1), str(hi + 1), str(2**63 - 1), "-1", "-9223372036854775808", "1.5", "1e3", "inf", "nan",
              "true", '"1"', "[1]"}
    if lo > 0:
        values.add("0")
    return sorted(v for v in values if not (v.lstrip("-").isdigit() and lo <= int(v) <= hi))


def test_every_whole_number_key_has_its_range_in_the_example(tmp_path):
    lines = EXAMPLE.splitlines()
    for key, (lo, hi) in _example_ranges(tmp_path).items():
        name = key.split(".", 1)[1] if key != "prices.gpu_micros_per_s.*" else '"NVIDIA GeForce RTX 4090"'
        documented = [i for i, line in enumerate(lines)
                      if line.lstrip("# ").startswith(f"{name} =") and f"{lo}..{hi}" in "\n".join(lines[i - 1:i + 1])]
        assert documented, f"add `# {lo}..{hi}` beside {key} in EXAMPLE"


def test_every_whole_number_key_refuses_values_out_of_range_in_one_line(tmp_path, capsys):
    from node.cli import EXIT_UNUSABLE, main

    cases = 0
    for key, (lo, hi) in _example_ranges(tmp_path).items():
        shown = key.replace(".*", ".Test GPU")
        for value in _bad_values(lo, hi):
            path = tmp_path / "c.toml"
            path.write_text(_with_value(key, value, tmp_path / "data"))
            assert main(["provide", "--config", str(path)]) == EXIT_UNUSABLE, (key, value)
            out, err = capsys.readouterr()
            assert out == "" and err.count("\n") == 1, (key, value, err)
            assert f": {shown}: expected a whole number in {lo}..{hi}, got " in err, (key, value, err)
            assert len(err) < 300 and "Traceback" not in err
            cases += 1
        for value in (lo, hi):  # both ends are accepted
            path = tmp_path / "c.toml"
            path.write_text(_with_value(key, str(value), tmp_path / "data"))
            load_config(path)
    assert cases > 100


def test_ranges_keep_derived_values_inside_the_wire_and_the_database(tmp_path):
    """At every maximum at once: the offer encodes, and the most one job can cost stays below 2^63."""
    from market.offers import OfferedGpu, build_offer
    from market.pricing import price_per_s
    from p2p.market_records import GpuSpec, ResourceRequest

    top = {k: hi for k, (_, hi) in _example_ranges(tmp_path).items()}
    doc = EXAMPLE.replace('# "NVIDIA GeForce RTX 4090" = 600', f'"Test GPU" = {top.pop("prices.gpu_micros_per_s.*")}')
    for key, hi in top.items():
        doc = re.sub(rf"^({re.escape(key.split('.', 1)[1])}) = \S+", rf"\1 = {hi}", doc, count=1, flags=re.M)
    path = tmp_path / "top.toml"
    path.write_text(doc)
    cfg = load_config(path)
    assert cfg.terms.ttl_ms == top["limits.offer_ttl_s"] * 1000 and cfg.memory_mib == top["limits.memory_mib"]
    # 64 GPUs: more than any one machine holds.
    gpus = [OfferedGpu(f"GPU-{i}", GpuSpec("Test GPU", 81920, "9.0", "550", "12.4")) for i in range(64)]
    year_3000_ms = 32_503_680_000_000
    offer = build_offer(b"\1" * 32, ["/ip4/127.0.0.1/tcp/1"], cfg.terms, gpus, cfg.cpu_millis, cfg.memory_mib,
                        [g.uuid for g in gpus], cfg.cpu_millis, cfg.memory_mib, seq=1, now_ms=year_3000_ms)
    assert type(offer).decode(offer.encode()) == offer
    everything = ResourceRequest(gpus=64, gpu_model="Test GPU", min_gpu_memory_mib=0, min_compute_capability=None,
                                 cpu_millis=cfg.cpu_millis, memory_mib=cfg.memory_mib)
    worst = price_per_s(cfg.terms.prices, everything, tuple(g.spec for g in gpus))
    assert worst is not None and worst * cfg.terms.limits.max_duration_s < 2**63
    assert cfg.terms.receipts.exposure_cap_micros < 2**63 and cfg.pids_limit < 2**31


def test_huge_ttl_through_the_real_cli_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "c.toml"
    path.write_text(_with_value("limits.offer_ttl_s", str(2**63 - 1), tmp_path / "data"))
    env = {**os.environ, "HOME": str(tmp_path), "SUANLI_HOME": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-m", "node.cli", "provide", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "limits.offer_ttl_s: expected a whole number in 10..86400" in done.stderr


def test_the_start_window_reaches_the_provider_and_has_a_range(tmp_path):
    """Issue 13 M3: how long an agreement may stay unstarted is the operator's, within 5..600 s."""
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE.replace("start_window_s = 30", "start_window_s = 12", 1))
    assert load_config(path).start_window_s == 12
    path.write_text(EXAMPLE.replace("start_window_s = 30", "start_window_s = 3600", 1))
    with pytest.raises(ConfigError, match=r"limits.start_window_s: expected a whole number in 5..600"):
        load_config(path)


@pytest.mark.parametrize("env_name, leaf", [("SUANLI_HOME", ""), ("XDG_DATA_HOME", "suanli")])
def test_init_config_writes_the_data_dir_in_force(tmp_path, env_name, leaf):
    """Issue 17 item 7: `provide --init-config` wrote ~/.local/share/suanli whatever $SUANLI_HOME said, so
    `suanli status` (which reads $SUANLI_HOME) then found no provider. Through the real CLI; a directory
    name with a quote and a non-ASCII letter stays one TOML string."""
    import subprocess
    import sys

    home = tmp_path / 'dätä "x"'
    env = {k: v for k, v in os.environ.items() if k not in ("SUANLI_HOME", "XDG_DATA_HOME")}
    env |= {"HOME": str(tmp_path / "home"), env_name: str(home)}
    path = tmp_path / "provider.toml"
    done = subprocess.run([sys.executable, "-m", "node.cli", "provide", "--init-config", str(path)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    expected = home / leaf if leaf else home
    cfg = load_config(path)
    assert cfg.data_dir == expected and cfg.key_path == expected / "node.key"
    assert f"# key = {json_string(expected / 'node.key')}" in path.read_text()
    assert not (tmp_path / "home").exists()  # nothing written into the home directory


def json_string(path) -> str:  # noqa: ANN001
    import json

    return json.dumps(str(path), ensure_ascii=False)


def test_images_section_names_registries_and_sizes(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE.replace("allowed_registries = []", 'allowed_registries = ["127.0.0.1:5000", "ghcr.io"]')
                    .replace("max_image_mib = 20480", "max_image_mib = 512"))
    cfg = load_config(path)
    assert cfg.images.allowed_registries == ("127.0.0.1:5000", "ghcr.io") and cfg.images.max_image_mib == 512

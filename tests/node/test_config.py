"""Provider configuration: the example loads; every mistake is one line naming the key."""

from __future__ import annotations

import pytest

from node.config import EXAMPLE, load_config, write_example
from p2p.errors import ConfigError


def test_example_config_loads(tmp_path):
    path = write_example(tmp_path / "provider.toml")
    cfg = load_config(path)
    assert cfg.terms.prices.cpu_core_micros_per_s == 50 and cfg.terms.receipts.interval_ms == 1000
    assert cfg.listen == ("/ip4/0.0.0.0/tcp/0",) and cfg.bootstrap == () and cfg.runtime is None
    assert cfg.key_path.name == "node.key"
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

"""Config: shipped examples load, unknown keys name their path, env and secrets resolve."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lookout.durations import parse_duration_s
from lookout.errors import ConfigError
from lookout.monitor.config import load_settings
from lookout.monitor.config.node import mqtt_client_id

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_minimal_config_loads() -> None:
    s = load_settings(CONFIGS / "minimal.yaml")
    assert s.bus.url == "mqtt://127.0.0.1:1883"
    assert s.store.url == "sqlite:///var/lib/lookout/lookout.db"
    assert s.eval_interval == 10.0


def test_full_config_loads_every_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.invalid/T0/B0/xyz")
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    s = load_settings(CONFIGS / "full.yaml")
    assert s.bus.session_expiry_s == 7 * 86400
    assert s.bus.reconnect_max_s == 30.0
    assert s.metrics.max_window == 900.0
    assert s.prices["gpt-4o"].output == 0.01
    assert s.rules[0].for_s == 60.0
    hook = s.channels["pager-hook"]
    assert hook.secret is not None and hook.secret.get_secret_value() == "s3cret"


def test_no_config_gives_working_defaults() -> None:
    s = load_settings(None)
    assert s.bus.topics == ["llm/records/#"] and s.bus.qos == 1
    assert s.api.bind == "127.0.0.1:8321"
    assert s.store.url.startswith("sqlite:///")


def test_unknown_key_is_an_error_naming_its_path(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("bus:\n  url: mqtt://127.0.0.1:1883\n  retian: true\n")
    with pytest.raises(ConfigError, match=r"bus\.retian: unknown key"):
        load_settings(f)
    f.write_text("rules:\n  - {name: a, metric: qps, threshold: 1, colour: red}\n")
    with pytest.raises(ConfigError, match=r"rules\.0\.colour: unknown key"):
        load_settings(f)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("store:\n  record_sample_rate: 0.5\n")
    monkeypatch.setenv("LOOKOUT_STORE__RECORD_SAMPLE_RATE", "0.25")
    monkeypatch.setenv("LOOKOUT_BUS__URL", "mqtts://broker.internal:8883")
    s = load_settings(f)
    assert s.store.record_sample_rate == 0.25
    assert s.bus.tls and s.bus.port == 8883 and s.bus.host == "broker.internal"


def test_unknown_environment_key_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKOUT_BUS__NOPE", "1")
    with pytest.raises(ConfigError, match=r"bus\.nope: unknown key"):
        load_settings(None)


def test_secrets_from_env_file_and_systemd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("from-credential\n")
    (tmp_path / "token").write_text("from-file-0123456789")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("JUDGE_KEY", "from-env")
    f = tmp_path / "c.yaml"
    f.write_text(
        "bus: {password: '${cred:mqtt-password}'}\n"
        f"api: {{token: '${{file:{tmp_path}/token}}'}}\n"
        "judge: {api_key: '${JUDGE_KEY}'}\n"
    )
    s = load_settings(f)
    assert s.bus.password is not None and s.bus.password.get_secret_value() == "from-credential"
    assert s.api.token is not None and s.api.token.get_secret_value() == "from-file-0123456789"
    assert s.judge.api_key is not None and s.judge.api_key.get_secret_value() == "from-env"
    assert "from-env" not in repr(s) and "from-file" not in str(s)


def test_missing_variable_names_the_key(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("bus: {password: '${SURELY_NOT_SET_ANYWHERE}'}\n")
    with pytest.raises(ConfigError, match=r"bus\.password: environment variable SURELY_NOT"):
        load_settings(f)


def test_token_is_required_off_loopback(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("api: {bind: '0.0.0.0:8321'}\n")
    with pytest.raises(ConfigError, match=r"api\.token is required"):
        load_settings(f)
    f.write_text("api: {bind: '0.0.0.0:8321', token: a-token-of-16-chars}\n")
    assert load_settings(f).api.token is not None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("5m", 300), ("7d", 604800), ("250ms", 0.25), (3, 3), ("1.5h", 5400)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "bus: {password: hunter2}\napi: {bind: '0.0.0.0:9000', token: tok-123-4567890abc}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "lookout", "check-config", str(f)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "hunter2" not in out.stdout and "tok-123" not in out.stdout
    assert "password: '**********'" in out.stdout
    assert "bind: 0.0.0.0:9000" in out.stdout


def test_check_config_fails_with_the_key_path(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("store: {url: 'sqlite:///x.db', sample: 1}\n")
    out = subprocess.run(
        [sys.executable, "-m", "lookout", "check-config", str(f)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert "store.sample: unknown key" in out.stderr


def test_an_incomplete_channel_is_an_error_naming_it(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("channels:\n  team: {kind: slack, token: xoxb-1}\n")
    with pytest.raises(ConfigError, match=r"channels\.team.*needs `webhook_url`, or `token`"):
        load_settings(f)
    f.write_text("channels:\n  hook: {kind: webhook}\n")
    with pytest.raises(ConfigError, match=r"channels\.hook.*needs `url`"):
        load_settings(f)


def test_a_bucket_that_straddles_minutes_is_refused(tmp_path: Path) -> None:
    # Each bucket's records are committed into one stored minute.
    path = tmp_path / "c.yaml"
    path.write_text("metrics:\n  bucket_s: 7s\n")
    with pytest.raises(ConfigError, match="bucket_s must divide a minute"):
        load_settings(path)
    path.write_text("metrics:\n  bucket_s: 15s\n")
    assert load_settings(path).metrics.bucket_s == 15.0


def test_node_id_names_the_session_of_a_shared_group_member(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("node:\n  id: edge-2\nbus:\n  shared_group: lookout\n")
    s = load_settings(path)
    assert mqtt_client_id(s.bus, s.node) == "lookout-edge-2"
    path.write_text("bus:\n  client_id: mine\n  shared_group: lookout\n")
    s = load_settings(path)
    assert mqtt_client_id(s.bus, s.node) == "mine"
    assert mqtt_client_id(load_settings(None).bus, s.node) == "lookout"  # one node, as before
    path.write_text("node:\n  id: 'has space'\n")
    with pytest.raises(ConfigError, match=r"node\.id 'has space'"):
        load_settings(path)

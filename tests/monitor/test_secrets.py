"""Secrets a careless operator hands over (issue 12): an empty or short API token is refused at
start with the reason, and `check-config` shows no header value or URL credential."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lookout.errors import ConfigError

TOKEN_REASON = "at least 16 characters"


def lookout(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lookout", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200", **env},
    )


@pytest.mark.parametrize(
    ("yaml_token", "env"),
    [
        ("'${API_TOKEN}'", {"API_TOKEN": ""}),  # an empty variable
        ("'${file:TMP/token}'", {}),  # an empty credential file
        (None, {"LOOKOUT_API__TOKEN": ""}),  # an empty override
        ("'short-token'", {}),  # 11 characters
        ("'               '", {}),  # spaces
    ],
)
def test_an_empty_or_short_token_is_refused_at_start_with_the_reason(
    tmp_path: Path, yaml_token: str | None, env: dict[str, str]
) -> None:
    """It once switched authentication off, on 0.0.0.0 too."""
    (tmp_path / "token").write_text("\n")
    api = "bind: '0.0.0.0:0'" + (f", token: {yaml_token}" if yaml_token else "")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"api: {{{api.replace('TMP', str(tmp_path))}}}\n"
        f"store: {{url: 'sqlite:///{tmp_path}/lookout.db'}}\n"
    )
    started = lookout("run", "-c", str(config), **env)
    assert started.returncode == ConfigError.exit_code, started.stderr
    assert "api.token" in started.stderr and TOKEN_REASON in started.stderr
    checked = lookout("check-config", str(config), **env)
    assert checked.returncode == 2 and TOKEN_REASON in checked.stderr


def test_check_config_masks_headers_and_credentials_in_urls(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "bus: {url: 'mqtt://lookout:BUSPASS@broker.internal:1883'}\n"
        "store: {url: 'sqlite:///x.db'}\n"
        "detectors: {embedder: {kind: langchain, spec: 'openai:e',"
        " base_url: 'https://emb:EMBPASS@emb.internal/v1?key=EMBKEY'}}\n"
        "judge: {base_url: 'http://u:JUDGEPASS@llm.internal/v1'}\n"
        "channels:\n"
        "  hook:\n"
        "    kind: webhook\n"
        "    url: 'https://hooks.example.com/in?apikey=HOOKKEY&team=ml'\n"
        "    headers: {Authorization: 'Bearer HEADERTOKEN', X-Api-Key: HEADERKEY}\n"
    )
    out = lookout("check-config", str(config))
    assert out.returncode == 0, out.stderr
    secrets = ("BUSPASS", "EMBPASS", "EMBKEY", "JUDGEPASS", "HOOKKEY", "HEADERTOKEN", "HEADERKEY")
    for secret in secrets:
        assert secret not in out.stdout + out.stderr, secret
    assert "url: mqtt://broker.internal:1883" in out.stdout  # the user moved to bus.username
    assert "username: lookout" in out.stdout
    assert "https://hooks.example.com/in?apikey=**********&team=**********" in out.stdout
    assert "Authorization: '**********'" in out.stdout


def test_a_user_in_bus_url_and_another_in_bus_username_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("bus: {url: 'mqtt://a:PASS@h:1883', username: b}\n")
    out = lookout("check-config", str(config))
    assert out.returncode == 2 and "bus.username" in out.stderr and "PASS" not in out.stderr

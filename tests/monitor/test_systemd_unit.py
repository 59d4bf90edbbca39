"""The shipped unit and docs/deploy.md (issue 12): a fresh install starts as written, and a bad
config or a corrupt database stops the service instead of a restart loop, with exit codes the
unit and the daemon agree on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lookout.errors import ConfigError, DatabaseError
from lookout.monitor.config.service import default_store_url
from lookout.monitor.config.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "lookout.service"
GUIDE = ROOT / "docs" / "deploy.md"


def directives(unit: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value given (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_unit_does_not_restart_into_a_loop() -> None:
    unit, service = directives()["Unit"], directives()["Service"]
    assert service["Restart"] == ["on-failure"]
    prevented = {
        int(code) for value in service["RestartPreventExitStatus"] for code in value.split()
    }
    assert {ConfigError.exit_code, DatabaseError.exit_code} <= prevented
    assert int(unit["StartLimitBurst"][0]) >= 1
    assert unit["StartLimitIntervalSec"][0].rstrip("s").isdigit()
    # StartLimit*= belongs in [Unit]: systemd ignores it in [Service] with only a warning.
    assert not {"StartLimitBurst", "StartLimitIntervalSec"} & set(service)


def test_the_unit_is_hardened_and_fails_filtered_calls_softly() -> None:
    service = directives()["Service"]
    assert service["SystemCallErrorNumber"] == ["EPERM"]
    assert service["SystemCallFilter"][0] == "@system-service"
    assert service["UMask"] == ["0077"] and service["StateDirectoryMode"] == ["0700"]
    assert service["NoNewPrivileges"] == ["yes"] and service["CapabilityBoundingSet"] == [""]


def test_a_fresh_install_needs_no_credential_file() -> None:
    """A missing `LoadCredential=` path fails the unit at start; the guide creates none."""
    service = directives()["Service"]
    assert "LoadCredential" not in service
    for optional in service.get("EnvironmentFile", []):
        assert optional.startswith("-"), optional


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists: point it at one that does.
    text = UNIT.read_text().replace("/opt/lookout/bin/lookout", shutil.which("true") or "/bin/true")
    unit = tmp_path / "lookout.service"
    unit.write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and "lookout.service" not in out.stderr, out.stderr


def test_the_guide_installs_what_the_unit_runs() -> None:
    guide = GUIDE.read_text()
    [exec_start] = directives()["Service"]["ExecStart"]
    binary, *_, config = exec_start.split()
    venv = binary.removesuffix("/bin/lookout")
    assert f"python3 -m venv {venv}" in guide
    assert "cp configs/" in guide and f" {config}" in guide
    assert "cp systemd/lookout.service /etc/systemd/system/" in guide


def clean_env(tmp_path: Path) -> dict[str, str]:
    """An operator's shell: none of the variables a test run or an example config sets."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
    return {**keep, "HOME": str(tmp_path), "COLUMNS": "200"}


def test_the_config_the_guide_copies_is_valid_as_shipped(tmp_path: Path) -> None:
    match = re.search(r"sudo cp (configs/\S+\.yaml) /etc/lookout/lookout\.yaml", GUIDE.read_text())
    assert match, "docs/deploy.md copies a config to /etc/lookout/lookout.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "lookout", "check-config", str(ROOT / match.group(1))],
        capture_output=True,
        text=True,
        check=False,
        env=clean_env(tmp_path),
    )
    assert out.returncode == 0, out.stderr


def run_daemon(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lookout", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_a_bad_config_exits_with_the_code_the_unit_does_not_restart_on(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("store: {url: 'sqlite:///x.db', sample: 1}\n")
    out = run_daemon(config, clean_env(tmp_path))
    assert out.returncode == ConfigError.exit_code == 78
    assert "store.sample: unknown key" in out.stderr


def test_a_corrupt_database_exits_with_the_code_the_unit_does_not_restart_on(
    tmp_path: Path,
) -> None:
    db = tmp_path / "lookout.db"
    db.write_bytes(b"not a database, whatever it once was " * 200)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"store: {{url: 'sqlite:///{db}'}}\napi: {{bind: '127.0.0.1:0'}}\n"
        "bus: {topics: [none/#]}\ndetectors: {enabled: false}\n"
    )
    out = run_daemon(config, clean_env(tmp_path))
    assert out.returncode == DatabaseError.exit_code == 65, out.stderr
    assert f"cannot open the database {db}" in out.stderr.replace("\n", "")
    assert "Traceback" not in out.stderr


TEMPLATE = ROOT / "systemd" / "lookout@.service"
PER_NODE = {"Environment", "EnvironmentFile", "StateDirectory", "WorkingDirectory"}


def test_the_template_for_several_nodes_differs_only_in_what_makes_a_node() -> None:
    """Hardening and restart policy stay in step with the single-node unit."""
    single, template = directives(UNIT), directives(TEMPLATE)
    for section in ("Unit", "Service", "Install"):
        same = {k: v for k, v in single[section].items() if k not in PER_NODE | {"Description"}}
        assert {k: v for k, v in template[section].items() if k in same} == same, section
    service = template["Service"]
    assert service["StateDirectory"] == ["lookout-%i"]
    assert service["WorkingDirectory"] == ["/var/lib/lookout-%i"]
    assert service["Environment"] == [
        "LOOKOUT_NODE__ID=%H-%i",
        "LOOKOUT_API__BIND=127.0.0.1:832%i",
    ]
    # The instance's own file comes last: its settings win over the shared ones.
    assert service["EnvironmentFile"][-1] == "-/etc/lookout/lookout@%i.env"


def test_an_instance_environment_makes_a_node_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "lookout.yaml"
    config.write_text("bus: {shared_group: lookout}\n")
    # What systemd sets for lookout@2 on host box1 (%H-%i, 832%i, StateDirectory=lookout-%i).
    monkeypatch.setenv("LOOKOUT_NODE__ID", "box1-2")
    monkeypatch.setenv("LOOKOUT_API__BIND", "127.0.0.1:8322")
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "lookout-2"))
    settings = load_settings(config)
    assert settings.node.id == "box1-2"
    assert settings.api.bind == "127.0.0.1:8322"
    assert settings.store.local_path() == tmp_path / "lookout-2" / "lookout.db"
    assert default_store_url().endswith("lookout-2/lookout.db")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_an_instance_of_the_template(tmp_path: Path) -> None:
    text = TEMPLATE.read_text().replace(
        "/opt/lookout/bin/lookout", shutil.which("true") or "/bin/true"
    )
    (tmp_path / "lookout@.service").write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "lookout@2.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0 and "lookout@" not in out.stderr, out.stderr

"""The two distributions as users get them: wheels built from the repository and installed into
fresh venvs outside it, offline. Their dependencies come from this venv's site-packages, shown
to the fresh venv through a .pth file one entry at a time, so nothing of ours leaks in (the
strict editable links are left out) and pip checks each declared dependency against exactly
what is visible there (`--no-index`: nothing is fetched, and nothing of ours resolves by name).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import aiomqtt

REPO = Path(__file__).resolve().parent.parent
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
ASSETS = REPO / "monitor" / "web" / "dashboard_assets"
PIP_TIMEOUT_S = 120.0
# This venv's pip, deaf to the machine's pip configuration (its indexes and constraints).
PIP = (sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check")
# What an app must not drag in with the client: the daemon's heavy and server-side dependencies.
NOT_FOR_APPS = ("numpy", "sklearn", "torch", "amqtt", "slack_sdk", "langchain_core", "lookout")

CHECK_DAEMON = """
import importlib, importlib.metadata, importlib.util, json, pkgutil
import lookout
from lookout.detectors.embedders import StaticEmbedder
from lookout.monitor.web import dashboard

# The command's module first, as `lookout` loads it: lookout.monitor.cli.baseline imported on its
# own still meets the cli <-> cli.* cycle (issue 11); the import-cycle test is the one for that.
importlib.import_module("lookout.monitor.cli.main")
# __main__ runs the command when imported; the test runs `python -m lookout` instead.
names = ["lookout"] + [m.name for m in pkgutil.walk_packages(lookout.__path__, "lookout.")]
for name in names:
    if not name.endswith(".__main__"):
        importlib.import_module(name)
assets = importlib.resources.files(dashboard.__package__) / "dashboard_assets"
print(json.dumps({
    "file": lookout.__file__,
    "modules": names,
    "version": lookout.__version__,
    "dist_version": importlib.metadata.version("lookout-llm"),
    "embedding_dim": int(StaticEmbedder().embed(["where is my order?"]).shape[1]),
    "assets": sorted(p.name for p in assets.iterdir()),
    "client_visible": importlib.util.find_spec("lookout_client") is not None,
}))
"""

CHECK_CLIENT = """
import importlib.util, json, sys
from lookout_client import RecordPublisher, publish_record

present = [n for n in sys.argv[2].split(",") if importlib.util.find_spec(n) is not None]
try:
    from lookout_client import LookoutCallbackHandler
    missing_extra = ""
except ImportError as exc:
    missing_extra = str(exc)
with RecordPublisher(app="wheel-app", topic_prefix=sys.argv[1], flush_interval_s=0.05) as pub:
    accepted = publish_record(pub, prompt="hi", response="hello", model="m", latency_ms=12.5)
print(json.dumps({"present": present, "missing_extra": missing_extra, "accepted": accepted,
                  "published": pub.published, "dropped": pub.dropped}))
"""


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def build_wheel(source: Path, scratch: Path) -> Path:
    """Built from a copy: an in-tree build writes build/ and *.egg-info into the repository,
    beside the strict editable link tree. The build backend is this venv's setuptools."""
    config = tomllib.loads((source / "pyproject.toml").read_text())["tool"]["setuptools"]
    copy = scratch / "src"
    copy.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(source / name, copy / name)
    folders = config.get("package-dir", {}).values() or config["packages"]
    for folder in folders:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(source / folder, copy / folder, ignore=ignore)
    out = scratch / "wheels"
    offline = ("--no-deps", "--no-build-isolation", "--no-index")
    run(*PIP, "wheel", "--quiet", *offline, "--wheel-dir", out, copy)
    (wheel,) = out.glob("*.whl")
    return wheel


def fresh_venv(root: Path, shows: Callable[[str], bool]) -> Path:
    """A venv without pip that sees the entries of this venv's site-packages `shows` picks."""
    run(sys.executable, "-m", "venv", "--without-pip", root)
    python = root / "bin" / "python"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    view = root / "visible-deps"
    view.mkdir()
    for entry in SITE_PACKAGES.iterdir():
        if shows(entry.name):
            (view / entry.name).symlink_to(entry)
    # addsitedir, not a bare path: the .pth files shown (setuptools' distutils shim) apply too.
    pth = root / "lib" / version / "site-packages" / "_visible_deps.pth"
    pth.write_text(f"import site; site.addsitedir({str(view)!r})\n")
    return python


def pip_into(python: Path, *args: str | Path) -> str:
    """This venv's pip working on another venv (which has none of its own)."""
    return run(*PIP, "--python", python, *args)


def requirement_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as whl:
        (meta,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        lines = whl.read(meta).decode().splitlines()
    requires = [
        line.removeprefix("Requires-Dist: ") for line in lines if line.startswith("Requires-Dist: ")
    ]
    return [re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0].lower() for r in requires]


def expected_modules() -> set[str]:
    """Every module of the source folders, under the import name the mapping gives it."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    names: set[str] = set()
    for package, folder in config["package-dir"].items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            names.add(".".join((package, *parts)).removesuffix(".__init__"))
    return names


def test_the_daemon_wheel_installs_alone_and_imports_every_module(tmp_path: Path) -> None:
    wheel = build_wheel(REPO, tmp_path)
    assert wheel.name.startswith("lookout_llm-")
    with zipfile.ZipFile(wheel) as whl:
        files = set(whl.namelist())
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    assert {name.split("/")[0] for name in files} == {"lookout", dist_info}
    data = [*(REPO / "detectors" / "models").glob("*/*"), *ASSETS.iterdir()]
    assert data and {f"lookout/{p.relative_to(REPO)}" for p in data} <= files
    assert "lookout/py.typed" in files
    assert not {n for n in requirement_names(wheel) if n.startswith("lookout")}

    python = fresh_venv(tmp_path / "venv", lambda name: "lookout" not in name.lower())
    pip_into(python, "install", "--quiet", "--no-index", wheel)  # dependencies all visible
    report = json.loads(run(python, "-c", CHECK_DAEMON, cwd=tmp_path))

    assert Path(report["file"]).is_relative_to(tmp_path / "venv")
    assert set(report["modules"]) >= expected_modules()
    assert report["version"] == report["dist_version"]
    assert report["embedding_dim"] > 0
    assert not report["client_visible"]  # and every module imported: the daemon needs no client
    assert report["assets"] == sorted(p.name for p in ASSETS.iterdir())
    assert "Usage" in run(tmp_path / "venv" / "bin" / "lookout", "--help", cwd=tmp_path)
    assert "Usage" in run(python, "-m", "lookout", "--help", cwd=tmp_path)


async def test_the_client_wheel_publishes_with_paho_alone(tmp_path: Path) -> None:
    wheel = await asyncio.to_thread(build_wheel, REPO / "client", tmp_path)
    assert sorted(requirement_names(wheel)) == ["langchain-core", "paho-mqtt"]
    python = fresh_venv(tmp_path / "venv", lambda name: name.lower().startswith("paho"))
    await asyncio.to_thread(pip_into, python, "install", "--quiet", "--no-index", wheel)
    await asyncio.to_thread(pip_into, python, "check")

    prefix = f"llm/records-wheel/{uuid.uuid4().hex[:10]}"
    async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"sub-{uuid.uuid4().hex[:8]}") as sub:
        await sub.subscribe(f"{prefix}/#", qos=1)
        app = await asyncio.create_subprocess_exec(
            python,
            "-c",
            CHECK_CLIENT,
            prefix,
            ",".join(NOT_FOR_APPS),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            out, err = await app.communicate()
            assert app.returncode == 0, err.decode()
            message = await anext(aiter(sub.messages))

    report = json.loads(out)
    assert report["present"] == []
    assert "lookout-llm-client[langchain]" in report["missing_extra"]
    assert (report["accepted"], report["published"], report["dropped"]) == (True, 1, 0)
    assert message.topic.value == f"{prefix}/wheel-app"
    (record,) = json.loads(bytes(message.payload))  # type: ignore[arg-type,unused-ignore]
    assert record["app"] == "wheel-app"
    assert (record["prompt"], record["response"], record["model"]) == ("hi", "hello", "m")
    assert record["latency_ms"] == 12.5 and record["id"] and record["ts"] > 0


def test_make_installs_our_packages_from_their_folders_never_by_name() -> None:
    installs = [
        line.split("pip install", 1)[1].split()
        for line in (REPO / "Makefile").read_text().splitlines()
        if "pip install" in line
    ]
    targets = [arg.strip("'\"") for args in installs for arg in args if arg[0] not in "-$"]
    assert ".[dev]" in targets and "./client[langchain]" in targets
    assert all(t == "pip" or t.startswith(".") for t in targets), targets

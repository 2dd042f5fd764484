"""jetson/deploy.sh with ssh, scp and the wheel build stubbed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .conftest import Sandbox

HERE = Path(__file__).resolve().parent
JETSON = HERE.parents[1] / "jetson"
SCRIPT = JETSON / "deploy.sh"
TARGET = "me@nano.local"


def deploy(sb: Sandbox, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return sb.run(SCRIPT, *args, **{"JETSON_HOST": "nano.local", "JETSON_USER": "me", **env})


def copied(sb: Sandbox) -> list[Path]:
    """The local files of the (one) scp call in the stub log."""
    [scp] = [line for line in sb.log() if line.startswith("scp ")]
    words = scp.split()
    assert words[:3] == ["scp", "-q", "-r"] and words[-1] == f"{TARGET}:pollex-deploy/"
    return [Path(w) for w in words[3:-1]]


def test_build_llamacpp_copies_the_script_lib_and_unit_then_runs_it(sandbox: Sandbox) -> None:
    result = deploy(sandbox, "build-llamacpp", "--force")
    assert result.returncode == 0, result.stderr
    assert sandbox.log() == [
        f"ssh {TARGET} mkdir -p pollex-deploy",
        f"scp -q -r {JETSON}/build-llamacpp.sh {JETSON}/lib.sh {JETSON}/llama-server.service "
        f"{TARGET}:pollex-deploy/",
        f"ssh -t {TARGET} sudo bash pollex-deploy/build-llamacpp.sh --force",
    ]
    assert "==> build llama-server on nano.local" in result.stdout


def test_install_builds_a_wheel_and_runs_the_installer(sandbox: Sandbox) -> None:
    result = deploy(sandbox, "install", "--jetson-clocks")
    assert result.returncode == 0, result.stderr
    log = sandbox.log()
    assert log[0] == "python3 -c import build"
    assert log[1].startswith("python3 -m build --wheel --outdir ")
    names = [f.name for f in copied(sandbox)]
    assert names == [
        "install-pollex.sh",
        "lib.sh",
        "config.yaml",
        "pollex.service",
        "jetson-clocks.service",
        "monitoring",
        "pollex-1.0.0-py3-none-any.whl",
    ]
    assert (JETSON / "monitoring").is_dir()
    assert log[-1] == (
        f"ssh -t {TARGET} sudo bash pollex-deploy/install-pollex.sh --jetson-clocks "
        "pollex-deploy/pollex-1.0.0-py3-none-any.whl"
    )
    assert not list((sandbox.root / "tmp").iterdir())  # the local wheel dir is cleaned up


@pytest.mark.parametrize(
    ("command", "kind", "script"),
    [("build-llamacpp", "build", "build-llamacpp.sh"), ("install", "install", "install-pollex.sh")],
)
def test_what_deploy_copies_is_all_the_script_needs_on_the_nano(
    request: pytest.FixtureRequest, command: str, kind: str, script: str
) -> None:
    sb = request.getfixturevalue(f"{kind}_sandbox")
    assert deploy(sb, command).returncode == 0
    nano = sb.root / "nano" / "pollex-deploy"
    nano.mkdir(parents=True)
    args: list[str] = []
    for f in copied(sb):
        if f.suffix == ".whl":  # deploy's wheel is gone by now: install the sandbox's one
            f = sb.root / "dist" / f.name
            args.append(str(nano / f.name))
        if f.is_dir():  # scp -r
            shutil.copytree(f, nano / f.name)
        else:
            shutil.copy2(f, nano)
    result = sb.run(nano / script, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "==> done" in result.stdout
    unit = "llama-server.service" if kind == "build" else "pollex.service"
    assert (Path(sb.env["UNIT_DIR"]) / unit).is_file()
    if kind == "install":
        installed = Path(sb.env["MONITORING_DIR"])
        assert (installed / "alerts.yml").read_text() == (
            JETSON / "monitoring/alerts.yml"
        ).read_text()
        assert "skipping" not in result.stdout.split("==> monitoring files", 1)[1].split("==>")[0]


def test_status_checks_both_units_and_health_on_the_nano(sandbox: Sandbox) -> None:
    result = deploy(sandbox, "status")
    assert result.returncode == 0, result.stderr
    assert sandbox.log() == [f"ssh {TARGET} sh -s -- http://127.0.0.1:8090/api/health"]
    script = (sandbox.root / "state" / "ssh-stdin").read_text()
    assert "for u in llama-server pollex" in script and 'systemctl is-active "$u.service"' in script
    assert "curl -sS --max-time 5" in script


def test_logs(sandbox: Sandbox) -> None:
    assert deploy(sandbox, "logs", "-f", "50").returncode == 0
    assert deploy(sandbox, "logs").returncode == 0
    assert sandbox.log() == [
        f"ssh {TARGET} journalctl --no-pager -u llama-server.service -u pollex.service -n 50 -f",
        f"ssh {TARGET} journalctl --no-pager -u llama-server.service -u pollex.service -n 200",
    ]


def test_dry_run_runs_nothing(sandbox: Sandbox) -> None:
    for cmd in ("build-llamacpp", "install", "status", "logs"):
        result = deploy(sandbox, cmd, DRY_RUN="1")
        assert result.returncode == 0, result.stderr
        assert "[dry-run] " in result.stdout + result.stderr
    assert [line for line in sandbox.log() if line != "python3 -c import build"] == []


def test_host_is_required_and_commands_are_checked(sandbox: Sandbox) -> None:
    no_host = deploy(sandbox, "status", JETSON_HOST="")
    assert no_host.returncode != 0 and "set JETSON_HOST" in no_host.stderr
    bad = deploy(sandbox, "reboot")
    assert bad.returncode != 0 and "unknown command: reboot" in bad.stderr
    assert "build-llamacpp [--force]" in deploy(sandbox, "--help").stdout
    assert sandbox.log() == []

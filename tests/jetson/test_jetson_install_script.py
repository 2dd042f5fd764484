"""jetson/install-pollex.sh end to end, with stubs (uv comes from a fake release tarball)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from helpers import tree_hash

if TYPE_CHECKING:
    from .conftest import Sandbox

HERE = Path(__file__).resolve().parent
JETSON = HERE.parents[1] / "jetson"
SCRIPT = JETSON / "install-pollex.sh"
MONITORING = JETSON / "monitoring"
MONITORING_FILES = (
    "prometheus.yml",
    "alerts.yml",
    "alerts.test.yml",
    "grafana/dashboards/pollex.json",
    "grafana/provisioning/dashboards/pollex.yml",
    "grafana/provisioning/datasources/pollex.yml",
)
STEPS = (
    "preflight",
    "uv 0.8.24",
    "Python 3.12",
    "venv",
    "pollex from",
    "system user pollex",
    "config in",
    "monitoring files in",
    "systemd units",
    "pollex.service",
    "done",
)
READ_ONLY_PREFIXES = (
    "uv --version",
    "uv python find",
    "getent ",
    "systemctl is-enabled ",
    "systemctl is-active ",
    "curl -fsS --max-time 2 ",
)


def mutating(log: list[str]) -> list[str]:
    return [line for line in log if not line.startswith(READ_ONLY_PREFIXES)]


def package(sb: Sandbox) -> Path:
    return sb.root / "dist" / "pollex-1.0.0-py3-none-any.whl"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_run_installs_second_run_changes_nothing(install_sandbox: Sandbox) -> None:
    sb = install_sandbox
    first = sb.run_ok(SCRIPT, str(package(sb)))
    for step in STEPS:
        assert f"==> {step}" in first.stdout, step
    log = "\n".join(sb.log())
    for call in (
        "curl -fsSL --retry 3 -o",
        "uv python install 3.12",
        "uv venv --python 3.12",
        f"uv pip install --python {sb.env['PREFIX']}/bin/python "
        f"--reinstall-package pollex {package(sb)}",
        "useradd --system --user-group --no-create-home",
        "chown root:pollex",
        "chown root:root",
        "systemctl daemon-reload",
        "systemctl enable pollex.service",
        "systemctl restart pollex.service",
        "curl -fsS --max-time 2 http://127.0.0.1:8090/api/health",
    ):
        assert call in log, call
    conf = Path(sb.env["CONF_DIR"])
    assert (conf / "config.yaml").read_text() == (JETSON / "config.yaml").read_text()
    assert mode(conf / "config.yaml") == 0o640
    assert mode(conf / "secrets.env") == 0o600
    assert "POLLEX_API_KEY" in (conf / "secrets.env").read_text()
    unit = Path(sb.env["UNIT_DIR"]) / "pollex.service"
    assert unit.read_text() == (JETSON / "pollex.service").read_text()
    assert not (Path(sb.env["UNIT_DIR"]) / "jetson-clocks.service").exists()
    assert (Path(sb.env["TOOLS_BIN"]) / "uv").exists()
    installed = Path(sb.env["MONITORING_DIR"])
    for name in MONITORING_FILES:  # readable by Prometheus's and Grafana's own users
        assert (installed / name).read_bytes() == (MONITORING / name).read_bytes(), name
        assert mode(installed / name) == 0o644, name
    assert mode(installed) == 0o755
    assert sorted(p.relative_to(MONITORING) for p in MONITORING.rglob("*") if p.is_file()) == (
        sorted(Path(name) for name in MONITORING_FILES)
    )
    assert "changed: a Prometheus or Grafana using them needs" in first.stdout

    opt_before = tree_hash(sb.root / "opt")
    etc_before = tree_hash(sb.root / "etc")
    sb.clear_log()
    second = sb.run_ok(SCRIPT, str(package(sb)))
    assert [line for line in mutating(sb.log()) if not line.startswith("chown ")] == []
    assert "this package is installed, skipping" in second.stdout
    assert "running, nothing changed" in second.stdout
    assert "pollex-monitoring/alerts.yml is up to date" in second.stdout
    assert "changed: a Prometheus" not in second.stdout
    assert tree_hash(sb.root / "opt") == opt_before
    assert tree_hash(sb.root / "etc") == etc_before


def test_existing_config_and_secrets_are_kept(install_sandbox: Sandbox) -> None:
    sb = install_sandbox
    conf = Path(sb.env["CONF_DIR"])
    conf.mkdir(parents=True)
    (conf / "config.yaml").write_text("port: 9999\n")
    (conf / "secrets.env").write_text("POLLEX_API_KEY=mine\n")
    result = sb.run_ok(SCRIPT, str(package(sb)))
    assert (conf / "config.yaml").read_text() == "port: 9999\n"
    assert (conf / "secrets.env").read_text() == "POLLEX_API_KEY=mine\n"
    assert "config.yaml exists, keeping it" in result.stdout


def test_monitoring_kit_files_are_updated_and_prometheus_yml_is_kept(
    install_sandbox: Sandbox,
) -> None:
    sb = install_sandbox
    installed = Path(sb.env["MONITORING_DIR"])
    installed.mkdir(parents=True)
    (installed / "prometheus.yml").write_text("# mine: host label set, alerting added\n")
    (installed / "alerts.yml").write_text("groups: []  # an older kit's rules\n")
    sb.clear_log()
    result = sb.run_ok(SCRIPT, str(package(sb)))
    assert (installed / "prometheus.yml").read_text() == "# mine: host label set, alerting added\n"
    assert "prometheus.yml exists, keeping it" in result.stdout
    assert (installed / "alerts.yml").read_bytes() == (MONITORING / "alerts.yml").read_bytes()
    assert f"installed {installed}/alerts.yml" in result.stdout
    assert "systemctl reload prometheus" in result.stdout  # said, not done: not ours
    assert not any("prometheus" in line or "grafana" in line for line in sb.log())


def test_monitoring_directories_are_readable_whatever_the_umask(install_sandbox: Sandbox) -> None:
    sb = install_sandbox
    strict = sb.root / "strict-umask.sh"
    strict.write_text(f'umask 077\nexec bash {SCRIPT} "$@"\n')
    sb.run_ok(strict, str(package(sb)))
    installed = Path(sb.env["MONITORING_DIR"])
    for directory in [installed, *(p for p in installed.rglob("*") if p.is_dir())]:
        assert mode(directory) == 0o755, directory
    assert mode(Path(sb.env["CONF_DIR"])) == 0o750  # the config stays the pollex group's


def test_without_monitoring_beside_it_the_installer_skips_that_step(
    install_sandbox: Sandbox,
) -> None:
    sb = install_sandbox
    copy = sb.root / "partial-copy"
    copy.mkdir()
    for name in ("install-pollex.sh", "lib.sh", "config.yaml", "pollex.service"):
        shutil.copy2(JETSON / name, copy / name)
    result = sb.run_ok(copy / "install-pollex.sh", str(package(sb)))
    assert f"no {copy}/monitoring beside this script; skipping" in result.stdout
    assert not Path(sb.env["MONITORING_DIR"]).exists()
    assert "==> done" in result.stdout


def test_a_new_package_is_installed_and_the_service_restarted(install_sandbox: Sandbox) -> None:
    sb = install_sandbox
    sb.run_ok(SCRIPT, str(package(sb)))
    package(sb).write_bytes(b"wheel v2")
    sb.clear_log()
    sb.run_ok(SCRIPT, str(package(sb)))
    log = sb.log()
    assert any(line.startswith("uv pip install") for line in log)
    assert "systemctl restart pollex.service" in log
    assert not any(
        line.startswith(("uv python install", "uv venv", "useradd", "curl -fsSL")) for line in log
    )


def test_jetson_clocks_flag_installs_and_starts_the_unit(install_sandbox: Sandbox) -> None:
    sb = install_sandbox
    sb.run_ok(SCRIPT, "--jetson-clocks", str(package(sb)))
    unit = Path(sb.env["UNIT_DIR"]) / "jetson-clocks.service"
    assert unit.read_text() == (JETSON / "jetson-clocks.service").read_text()
    assert "systemctl enable jetson-clocks.service" in sb.log()
    assert "systemctl start jetson-clocks.service" in sb.log()


def test_uv_with_a_bad_checksum_is_refused(install_sandbox: Sandbox) -> None:
    sb = install_sandbox
    Path(sb.env["STUB_UV_TARBALL"] + ".sha256").write_text("0" * 64 + "  uv.tar.gz\n")
    result = sb.run(SCRIPT, str(package(sb)))
    assert result.returncode != 0
    assert "uv download: sha256" in result.stderr
    assert not (Path(sb.env["TOOLS_BIN"]) / "uv").exists()


def test_dry_run_changes_nothing(install_sandbox: Sandbox) -> None:
    sb = install_sandbox
    result = sb.run_ok(SCRIPT, "--dry-run", str(package(sb)))
    for step in STEPS:
        assert f"==> {step}" in result.stdout, step
    assert "[dry-run] install uv to" in result.stdout
    assert "[dry-run] write " in result.stdout
    assert f"[dry-run] install -d -m 0755 {sb.env['MONITORING_DIR']}" in result.stdout
    assert mutating(sb.log()) == []
    assert not (sb.root / "opt").exists() and not (sb.root / "etc").exists()


def test_arguments_are_checked(install_sandbox: Sandbox) -> None:
    sb = install_sandbox
    for args, message in (
        ((), "usage:"),
        (("nope.whl",), "no such package: nope.whl"),
        ((str(sb.env["STUB_UV_TARBALL"] + ".sha256"),), "neither a wheel"),
    ):
        result = sb.run(SCRIPT, *args)
        assert result.returncode != 0 and message in result.stderr, args
    assert sb.log() == []

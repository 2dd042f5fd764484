"""The systemd units in jetson/: valid for systemd-analyze, and only systemd-237 directives.

The Nano runs Ubuntu 18.04 with systemd 237, which ignores (with a log line) any directive
it does not know, so a hardening option from a newer systemd would silently do nothing,
or a newer value would fail the unit. The allow-list below holds directives that systemd
237 documents; the version each appeared in is noted where it is recent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import words

JETSON = Path(__file__).resolve().parents[2] / "jetson"
UNITS = sorted(JETSON.glob("*.service"))

SYSTEMD_237 = {
    "Unit": set(
        words("""
        Description Documentation Requires Requisite Wants BindsTo PartOf Conflicts Before
        After OnFailure PropagatesReloadTo ReloadPropagatedFrom JoinsNamespaceOf
        RequiresMountsFor OnFailureJobMode IgnoreOnIsolate StopWhenUnneeded RefuseManualStart
        RefuseManualStop AllowIsolate DefaultDependencies JobTimeoutSec JobTimeoutAction
        StartLimitIntervalSec StartLimitBurst StartLimitAction
        ConditionPathExists ConditionPathIsDirectory ConditionFileIsExecutable
        ConditionArchitecture ConditionVirtualization ConditionHost
        AssertPathExists AssertFileIsExecutable
        """)  # StartLimit*= moved to [Unit] in 229
    ),
    "Service": set(
        words("""
        Type RemainAfterExit GuessMainPID PIDFile BusName ExecStart ExecStartPre ExecStartPost
        ExecReload ExecStop ExecStopPost RestartSec TimeoutStartSec TimeoutStopSec TimeoutSec
        RuntimeMaxSec WatchdogSec Restart SuccessExitStatus RestartPreventExitStatus
        RestartForceExitStatus PermissionsStartOnly NotifyAccess FileDescriptorStoreMax
        KillMode KillSignal SendSIGHUP SendSIGKILL
        WorkingDirectory RootDirectory User Group SupplementaryGroups DynamicUser RemoveIPC
        Nice OOMScoreAdjust IOSchedulingClass IOSchedulingPriority CPUSchedulingPolicy
        CPUSchedulingPriority CPUAffinity UMask
        Environment EnvironmentFile PassEnvironment UnsetEnvironment
        StandardInput StandardOutput StandardError SyslogIdentifier SyslogFacility SyslogLevel
        SyslogLevelPrefix
        LimitCPU LimitFSIZE LimitDATA LimitSTACK LimitCORE LimitRSS LimitNOFILE LimitAS
        LimitNPROC LimitMEMLOCK LimitLOCKS LimitSIGPENDING LimitMSGQUEUE LimitNICE LimitRTPRIO
        LimitRTTIME
        CapabilityBoundingSet AmbientCapabilities SecureBits NoNewPrivileges
        ProtectSystem ProtectHome PrivateTmp PrivateDevices PrivateNetwork PrivateUsers
        ProtectKernelTunables ProtectKernelModules ProtectControlGroups
        RestrictAddressFamilies RestrictNamespaces RestrictRealtime MemoryDenyWriteExecute
        LockPersonality SystemCallFilter SystemCallArchitectures SystemCallErrorNumber
        ReadWritePaths ReadOnlyPaths InaccessiblePaths
        RuntimeDirectory RuntimeDirectoryMode RuntimeDirectoryPreserve StateDirectory
        CacheDirectory LogsDirectory ConfigurationDirectory
        CPUAccounting CPUWeight CPUQuota MemoryAccounting MemoryLow MemoryHigh MemoryMax
        MemoryLimit TasksAccounting TasksMax IOAccounting IOWeight DeviceAllow DevicePolicy
        Slice
        """)
    ),
    "Install": {"WantedBy", "RequiredBy", "Alias", "Also", "DefaultInstance"},
}
# The recent ones, for the record: ReadWritePaths/ReadOnlyPaths/InaccessiblePaths,
# RestrictRealtime, MemoryDenyWriteExecute, ProtectSystem=strict (231); DynamicUser,
# RemoveIPC, PrivateUsers, ProtectKernelTunables/Modules, ProtectControlGroups (232);
# RestrictNamespaces (233); LockPersonality, UnsetEnvironment, RuntimeDirectoryPreserve,
# State/Cache/Logs/ConfigurationDirectory (235). Not allowed (newer than 237):
# ProtectKernelLogs, ProtectClock, ProtectHostname, RestrictSUIDSGID, PrivateMounts, ...
# Values newer than 237 for directives that 237 knows.
NEWER_VALUES = {"ProtectHome": {"tmpfs"}}  # 242


def parse_unit(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every directive, in order."""
    section = ""
    out = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            section = m.group(1)
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a directive: {raw!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def directives(path: Path) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for _, key, value in parse_unit(path):
        result.setdefault(key, []).append(value)
    return result


def test_the_three_units_are_there() -> None:
    assert [u.name for u in UNITS] == [
        "jetson-clocks.service",
        "llama-server.service",
        "pollex.service",
    ]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_only_directives_known_to_systemd_237(unit: Path) -> None:
    for section, key, value in parse_unit(unit):
        assert section in SYSTEMD_237, f"{unit.name}: unknown section [{section}]"
        assert key in SYSTEMD_237[section], f"{unit.name}: [{section}] {key}= is not in systemd 237"
        assert value not in NEWER_VALUES.get(key, set()), (
            f"{unit.name}: {key}={value} is newer than 237"
        )


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze not found: install it with `apt-get install -y systemd`")
    # ExecStart binaries do not exist here: point them at an executable stub.
    stub = tmp_path / "stub-binary"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = re.sub(r"^(Exec\w+=[-@!+]*)(/\S+)", rf"\g<1>{stub}", unit.read_text(), flags=re.M)
    copy = tmp_path / unit.name
    copy.write_text(text)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=30
    )
    ours = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    assert result.returncode == 0 and ours == [], result.stdout + result.stderr


def test_llama_server_unit() -> None:
    d = directives(JETSON / "llama-server.service")
    (exec_start,) = d["ExecStart"]
    assert exec_start.startswith(
        "/usr/local/bin/llama-server -m /opt/llama-models/qwen2.5-1.5b-instruct-q4_0.gguf "
    )
    args = exec_start.split()
    for flag, value in (
        ("--port", "8080"),
        ("--host", "127.0.0.1"),
        ("-ngl", "999"),
        ("-c", "2048"),
        ("-t", "4"),
        ("--alias", "qwen2.5:1.5b-gpu"),
    ):
        assert args[args.index(flag) + 1] == value, flag
    assert "--mlock" in args
    assert "--metrics" in args  # llama-server's Prometheus endpoint, for jetson/monitoring
    assert d["LimitMEMLOCK"] == ["infinity"]  # mlock without it kills the service at load
    assert d["Restart"] == ["on-failure"] and d["RestartSec"] == ["5"]
    assert d["User"] == ["llama"] and d["SupplementaryGroups"] == ["video"]
    assert "PrivateDevices" not in d  # the GPU is a device
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"]


def test_pollex_unit() -> None:
    d = directives(JETSON / "pollex.service")
    assert d["ExecStart"] == ["/opt/pollex/bin/pollex serve --config /etc/pollex/config.yaml"]
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"] and d["WatchdogSec"] == ["30"]
    assert "llama-server.service" in d["After"][0].split()
    assert d["Wants"] == ["llama-server.service"]
    assert d["EnvironmentFile"] == ["-/etc/pollex/secrets.env"]
    assert d["User"] == ["pollex"]
    assert d["Restart"] == ["on-failure"]
    for key, value in (
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateDevices", "yes"),
    ):
        assert d[key] == [value], key
    # stop timeout leaves room for shutdown_grace_s (20 s)
    assert int(d["TimeoutStopSec"][0]) > 20


def test_jetson_clocks_unit_runs_before_llama_server() -> None:
    d = directives(JETSON / "jetson-clocks.service")
    assert d["Type"] == ["oneshot"] and d["RemainAfterExit"] == ["yes"]
    assert d["Before"] == ["llama-server.service"]
    assert d["ExecStart"] == ["/usr/bin/jetson_clocks"]

"""deploy/local/install-broker.sh stops only the broker the package started, by its pid, never
every Mosquitto on the machine by name (issue 6, defect 13).

The script runs against fakes on PATH (apt-get, service, systemctl, pkill, killall), so no
package is installed and no real service is touched; the "brokers" are copies of `sleep`
named `mosquitto`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy/local/install-broker.sh"


def fake(bin_dir: Path, name: str, exit_code: int, calls: Path) -> None:
    script = bin_dir / name
    script.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\nexit {exit_code}\n')
    script.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.touch()
    fake(bin_dir, "apt-get", 0, calls)
    for name in ("pkill", "killall", "systemctl"):
        fake(bin_dir, name, 0, calls)
    return bin_dir, calls


def broker(tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    """A process called `mosquitto` (as /proc/<pid>/comm shows it)."""
    where = tmp_path / name
    where.mkdir()
    binary = where / "mosquitto"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", binary)
    return subprocess.Popen([str(binary), "60"])


def run(bin_dir: Path, tmp_path: Path, pid_file: Path) -> None:
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "MOSQUITTO_SBIN": str(tmp_path / "not-installed"),
        "MOSQUITTO_PID_FILE": str(pid_file),
    }
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_without_an_init_system_only_the_packaged_broker_is_stopped_by_its_pid(
    sandbox: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, calls = sandbox
    fake(bin_dir, "service", 1, calls)  # no init script took it
    packaged, bystander = broker(tmp_path, "packaged"), broker(tmp_path, "bystander")
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(f"{packaged.pid}\n")
    try:
        run(bin_dir, tmp_path, pid_file)
        assert packaged.wait(timeout=5) == -15  # SIGTERM, by its pid
        assert bystander.poll() is None, "another Mosquitto was stopped"
        assert not any(
            line.split()[0] in ("pkill", "killall") for line in calls.read_text().splitlines()
        )
    finally:
        for proc in (packaged, bystander):
            proc.kill()
            proc.wait()


def test_the_init_system_stops_its_own_broker(sandbox: tuple[Path, Path], tmp_path: Path) -> None:
    bin_dir, calls = sandbox
    fake(bin_dir, "service", 0, calls)
    bystander = broker(tmp_path, "bystander")
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(f"{bystander.pid}\n")  # even a pid file naming it is left alone
    try:
        run(bin_dir, tmp_path, pid_file)
        assert "service mosquitto stop" in calls.read_text()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_stale_pid_file_naming_another_process_stops_nothing(
    sandbox: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, calls = sandbox
    fake(bin_dir, "service", 1, calls)
    other = subprocess.Popen(["sleep", "60"])  # the pid was reused by something else
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(f"{other.pid}\n")
    try:
        run(bin_dir, tmp_path, pid_file)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()

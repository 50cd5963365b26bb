"""deploy/local/install-postgres.sh: installs the PostgreSQL server from Debian's packages
only when its binaries are missing, without a prompt, and says so when it cannot.

The script runs against fakes on PATH (apt-get, sudo, service, systemctl, id), so no package is
installed and no real service is touched; POSTGRES_BIN_GLOB points at the test's directory.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy/local/install-postgres.sh"


def executable(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """Fakes of apt-get (installs nothing unless told), sudo, service, systemctl."""
    bin_dir = tmp_path / "bin"
    calls = tmp_path / "calls"
    calls.touch()
    executable(bin_dir / "apt-get", f'echo "apt-get $*" >> {calls}\nexit 0')
    executable(bin_dir / "sudo", '[ "$1" = -n ] && shift\nexec "$@"')
    for name in ("service", "systemctl"):
        executable(bin_dir / name, f'echo "{name} $*" >> {calls}\nexit 0')
    return tmp_path


def run(sandbox: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{sandbox / 'bin'}:/usr/bin:/bin",
        "POSTGRES_BIN_GLOB": str(sandbox / "lib" / "*" / "bin"),
        "HOME": str(sandbox),
    }
    return subprocess.run(
        ["bash", str(SCRIPT)],
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30, check=False,
    )  # fmt: skip


def calls(sandbox: Path) -> list[str]:
    return (sandbox / "calls").read_text().splitlines()


def test_present_server_binaries_install_nothing(sandbox: Path) -> None:
    for name in ("initdb", "postgres"):
        executable(sandbox / "lib" / "15" / "bin" / name, "exit 0")
    result = run(sandbox)
    assert (result.returncode, result.stderr, calls(sandbox)) == (0, "", [])


def test_missing_server_is_installed_from_debian_without_a_prompt(sandbox: Path) -> None:
    made = sandbox / "lib" / "15" / "bin"
    executable(
        sandbox / "bin" / "apt-get",
        f'echo "apt-get $*" >> {sandbox / "calls"}\n'
        f'case "$*" in *install*) mkdir -p {made} && for b in initdb postgres; do '
        f'printf "#!/bin/sh\\n" > {made}/$b; chmod +x {made}/$b; done;; esac',
    )
    result = run(sandbox)
    assert result.returncode == 0, result.stderr
    installs = [c for c in calls(sandbox) if c.startswith("apt-get") and "install" in c]
    assert len(installs) == 1 and "-y" in installs[0] and installs[0].endswith(" postgresql")
    assert "PostgreSQL installed" in result.stderr


def test_a_failed_install_fails_and_says_why(sandbox: Path) -> None:
    executable(sandbox / "bin" / "apt-get", "exit 100")
    result = run(sandbox)
    assert result.returncode == 1
    assert "could not install PostgreSQL" in result.stderr


def test_without_root_or_sudo_it_says_what_is_needed(sandbox: Path) -> None:
    executable(sandbox / "bin" / "id", "echo 1000")  # someone, not root
    (sandbox / "bin" / "sudo").unlink()
    result = run(sandbox)
    assert result.returncode == 1 and "needs root" in result.stderr

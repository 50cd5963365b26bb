# Sourced by the install-*.sh scripts: `apt_install PACKAGE...` installs Debian packages
# without a prompt, as root or through sudo without a password (never asking for one).
# Returns 0 when installed, 2 without apt-get, 3 without root (or such sudo), 1 when apt-get
# failed; the caller says what that means for it. Standard input is never read (CI has none).
apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 2
  local as_root=()
  if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true </dev/null >/dev/null 2>&1; then
      as_root=(sudo -n)
    else
      return 3
    fi
  fi
  timeout 600 "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    </dev/null >/dev/null 2>&1 || return 1
  timeout 900 "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "$@" </dev/null >/dev/null 2>&1 || return 1
}

# `as_root COMMAND...`: the command as root, the way apt_install would run it (for stopping
# the service a package started).
as_root() {
  if [ "$(id -u)" = "0" ]; then
    "$@"
  else
    sudo -n "$@"
  fi
}

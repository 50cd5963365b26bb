#!/usr/bin/env bash
# Installs Debian's Chromium when it is missing: the console's browser tests
# (tests/e2e/test_console.py) drive it with Playwright for Python, launched with
# executable_path=/usr/bin/chromium. Playwright's own browser download is never used.
# Run by `make test`; works as root or with sudo without a password.
set -u
have_browser() { [ -x "${CHROMIUM:-/usr/bin/chromium}" ]; }
if have_browser; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: no /usr/bin/chromium and no apt-get: install Chromium; the console's browser tests (tests/e2e/test_console.py) fail without it." >&2
  exit 1
fi
as_root=()
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true </dev/null >/dev/null 2>&1; then
    as_root=(sudo -n)
  else
    echo "install-chromium: no Chromium, and installing it needs root (or sudo without a password)." >&2
    exit 1
  fi
fi

echo "install-chromium: installing Chromium from Debian's packages..." >&2
if timeout 600 "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >/dev/null 2>&1 \
   && timeout 900 "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends chromium fonts-dejavu-core </dev/null >/dev/null 2>&1 && have_browser; then
  echo "install-chromium: Chromium installed." >&2
  exit 0
fi
echo "install-chromium: could not install Chromium (apt-get failed); the console's browser tests cannot run." >&2
exit 1

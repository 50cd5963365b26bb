#!/usr/bin/env bash
# Installs Debian's Chromium when it is missing: the console's browser tests
# (tests/e2e/test_console.py) drive it with Playwright for Python, launched with
# executable_path=/usr/bin/chromium. Playwright's own browser download is never used.
# Run by `make test`; works as root or with sudo without a password.
set -u
. "$(dirname "$0")/apt-install.sh"
have_browser() { [ -x "${CHROMIUM:-/usr/bin/chromium}" ]; }
if have_browser; then
  exit 0
fi
echo "install-chromium: installing Chromium from Debian's packages..." >&2
apt_install chromium fonts-dejavu-core
case $? in
  0) have_browser && { echo "install-chromium: Chromium installed." >&2; exit 0; } ;;
  2) echo "install-chromium: no /usr/bin/chromium and no apt-get: install Chromium; the console's browser tests (tests/e2e/test_console.py) fail without it." >&2; exit 1 ;;
  3) echo "install-chromium: no Chromium, and installing it needs root (or sudo without a password)." >&2; exit 1 ;;
esac
echo "install-chromium: could not install Chromium (apt-get failed); the console's browser tests cannot run." >&2
exit 1

#!/usr/bin/env bash
# Installs Mosquitto from Debian's packages when it is missing and we can (apt-get, as root or
# through sudo without a password).
# Never fails: without Mosquitto, Baton falls back to nats-server's MQTT listener and says so.
#
# The package may start a system broker on 1883; Baton starts its own, so that one is stopped:
# through the init system that started it, else by the pid it wrote. Never by name, which
# would also stop every other Mosquitto on the machine (issue 6, defect 13).
# MOSQUITTO_SBIN and MOSQUITTO_PID_FILE exist for the tests (tests/unit/test_install_broker.py).
set -u
. "$(dirname "$0")/apt-install.sh"
sbin="${MOSQUITTO_SBIN:-/usr/sbin/mosquitto}"
pid_file="${MOSQUITTO_PID_FILE:-/run/mosquitto/mosquitto.pid}"
if command -v mosquitto >/dev/null 2>&1 || [ -x "$sbin" ]; then
  exit 0
fi

stop_system_broker() {
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    as_root systemctl stop mosquitto </dev/null >/dev/null 2>&1 && return 0
  fi
  if command -v service >/dev/null 2>&1; then
    as_root service mosquitto stop </dev/null >/dev/null 2>&1 && return 0
  fi
  # No init system took it: the pid the package's broker wrote, if that is still Mosquitto.
  [ -r "$pid_file" ] || return 0
  local pid
  pid="$(tr -dc '0-9' < "$pid_file")"
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "mosquitto" ]; then
    as_root kill -TERM "$pid" </dev/null 2>/dev/null || true
  fi
}

echo "install-broker: installing Mosquitto from Debian's packages..." >&2
apt_install mosquitto
case $? in
  0)
    stop_system_broker
    echo "install-broker: Mosquitto installed." >&2
    ;;
  2|3) echo "install-broker: Mosquitto not installed and cannot install it here (apt-get, and root or sudo without a password, needed); nats-server's MQTT listener will be used." >&2 ;;
  *) echo "install-broker: could not install Mosquitto; nats-server's MQTT listener will be used." >&2 ;;
esac
exit 0

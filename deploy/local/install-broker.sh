#!/usr/bin/env bash
# Installs Mosquitto from Debian's packages when it is missing and we can (root + apt-get).
# Never fails: without Mosquitto, Baton falls back to nats-server's MQTT listener and says so.
#
# The package may start a system broker on 1883; Baton starts its own, so that one is stopped:
# through the init system that started it, else by the pid it wrote. Never by name, which
# would also stop every other Mosquitto on the machine (issue 6, defect 13).
# MOSQUITTO_SBIN and MOSQUITTO_PID_FILE exist for the tests (tests/unit/test_install_broker.py).
set -u
sbin="${MOSQUITTO_SBIN:-/usr/sbin/mosquitto}"
pid_file="${MOSQUITTO_PID_FILE:-/run/mosquitto/mosquitto.pid}"
if command -v mosquitto >/dev/null 2>&1 || [ -x "$sbin" ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-broker: Mosquitto not installed and cannot install it here; nats-server's MQTT listener will be used." >&2
  exit 0
fi

stop_system_broker() {
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl stop mosquitto >/dev/null 2>&1 && return 0
  fi
  if command -v service >/dev/null 2>&1; then
    service mosquitto stop >/dev/null 2>&1 && return 0
  fi
  # No init system took it: the pid the package's broker wrote, if that is still Mosquitto.
  [ -r "$pid_file" ] || return 0
  local pid
  pid="$(tr -dc '0-9' < "$pid_file")"
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "mosquitto" ]; then
    kill -TERM "$pid" 2>/dev/null || true
  fi
}

echo "install-broker: installing Mosquitto from Debian's packages..." >&2
export DEBIAN_FRONTEND=noninteractive
if timeout 600 apt-get update -qq >/dev/null 2>&1 \
   && timeout 600 apt-get install -y -qq --no-install-recommends mosquitto >/dev/null 2>&1; then
  stop_system_broker
  echo "install-broker: Mosquitto installed." >&2
else
  echo "install-broker: could not install Mosquitto; nats-server's MQTT listener will be used." >&2
fi
exit 0

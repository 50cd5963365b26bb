#!/usr/bin/env bash
# Installs Mosquitto from Debian's packages when it is missing and we can (root + apt-get).
# Never fails: without Mosquitto, Baton falls back to nats-server's MQTT listener and says so.
set -u
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-broker: Mosquitto not installed and cannot install it here; nats-server's MQTT listener will be used." >&2
  exit 0
fi
echo "install-broker: installing Mosquitto from Debian's packages..." >&2
export DEBIAN_FRONTEND=noninteractive
if timeout 600 apt-get update -qq >/dev/null 2>&1 \
   && timeout 600 apt-get install -y -qq --no-install-recommends mosquitto >/dev/null 2>&1; then
  # The package may start a system broker on 1883; Baton starts its own, so stop that one.
  (service mosquitto stop || pkill -x mosquitto) >/dev/null 2>&1 || true
  echo "install-broker: Mosquitto installed." >&2
else
  echo "install-broker: could not install Mosquitto; nats-server's MQTT listener will be used." >&2
fi
exit 0

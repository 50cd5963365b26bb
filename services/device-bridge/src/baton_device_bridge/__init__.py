"""Baton's device-bridge: lifecycle events out to devices over MQTT, device answers back in."""

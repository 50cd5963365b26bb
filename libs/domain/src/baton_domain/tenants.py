DEFAULT_TENANT = "default"

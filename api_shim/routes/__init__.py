"""One router per endpoint group of the Rime docs (Monitoring: one per resource), assembled in api_shim.main."""

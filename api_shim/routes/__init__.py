"""One router per endpoint group of the Rime docs, assembled in api_shim.main."""

"""genie_python's matplotlib backend for scripts: ``ibex_websocket_backend``."""

"""nginx on loopback for the web-seed tests: :mod:`torrent.tools.nginx` (the bench uses it too)."""

from torrent.tools.nginx import NGINX_START_TIMEOUT, Nginx, nginx_binary

__all__ = ["NGINX_START_TIMEOUT", "Nginx", "nginx_binary"]

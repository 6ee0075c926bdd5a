"""Postwall's web UI: a Flask application, one blueprint per concern.

`create_app(config_path)` (in webui.app) reads the same configuration files and opens the
same storage as the proxy; `postwall webui serve` runs it over HTTPS (webui.server).

This package module imports nothing: `postwall` registers the `webui` commands on every
start, and the proxy's supervisor must not load Flask or the database layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(*args: Any, **kwargs: Any) -> Flask:
    from webui.app import create_app as factory

    return factory(*args, **kwargs)

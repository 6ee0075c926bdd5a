"""Fixtures for the web UI's Flask test-client tests: an appliance configuration in a
temporary directory, the app on it, and signed-in admin / operator clients."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.webui import (
    ADMIN_PASSWORD,
    OPERATOR_PASSWORD,
    UIClient,
    create_user,
)


@dataclass
class Appliance:
    config_path: Path
    data_dir: Path
    app: Any

    @property
    def storage(self) -> Any:
        from webui.state import EXTENSION

        return self.app.extensions[EXTENSION].storage

    @property
    def overrides_path(self) -> Path:
        return self.data_dir / "config-overrides.yml"

    def client(self) -> UIClient:
        return UIClient(self.app)


def write_config(path: Path, data_dir: Path, extra: dict[str, Any] | None = None) -> None:
    config: dict[str, Any] = {
        "data_dir": str(data_dir),
        "local_domains": ["example.com"],
        # Nothing listens here: the proxy and Postfix are "down" for these tests.
        "downstream": {"host": "127.0.0.1", "port": 9, "timeout": 2},
        "smtp": {"hostname": "postwall.test"},
        "scoring": {"thresholds": {"tag": 5, "quarantine": 8, "reject": 12}},
        **(extra or {}),
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture
def appliance(tmp_path: Path) -> Iterator[Appliance]:
    from webui import create_app

    config_path = tmp_path / "postwall.yml"
    data_dir = tmp_path / "data"
    write_config(config_path, data_dir)
    app = create_app(config_path)
    appliance = Appliance(config_path, data_dir, app)
    create_user(appliance.storage, "admin", ADMIN_PASSWORD, "admin")
    create_user(appliance.storage, "oper", OPERATOR_PASSWORD, "operator")
    yield appliance
    appliance.storage.close()


@pytest.fixture
def anonymous(appliance: Appliance) -> UIClient:
    return appliance.client()


@pytest.fixture
def admin(appliance: Appliance) -> UIClient:
    client = appliance.client()
    response = client.login("admin", ADMIN_PASSWORD)
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


@pytest.fixture
def operator(appliance: Appliance) -> UIClient:
    client = appliance.client()
    response = client.login("oper", OPERATOR_PASSWORD)
    assert response.status_code == 302, response.get_data(as_text=True)
    return client

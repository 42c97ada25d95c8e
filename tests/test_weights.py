"""The runtime switches (offline, reachability, device, dtype, configs) and the weights of a job."""

from __future__ import annotations

import logging
import socket

import pytest
import torch

from semantix import runtime


@pytest.mark.parametrize("variable", runtime.OFFLINE_VARIABLES)
@pytest.mark.parametrize(("value", "expected"), [("1", True), ("TRUE", True), ("on", True), ("0", False), ("", False)])
def test_offline_reads_either_variable(monkeypatch, variable, value, expected):
    for name in runtime.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    assert runtime.offline() is expected
    if expected:
        assert not runtime.downloads_allowed("https://example.invalid/file")  # no connection attempted


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connecting is refused


def test_unreachable_host_is_asked_once_and_logged_once(monkeypatch, caplog):
    for name in runtime.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    runtime.host_reachable.cache_clear()
    url = f"https://127.0.0.1:{_closed_port()}/some/file"
    with caplog.at_level(logging.WARNING, logger="semantix.runtime"):
        assert not runtime.downloads_allowed(url)
        assert not runtime.downloads_allowed(url)
    assert [r.message.count("unreachable") for r in caplog.records] == [1]
    runtime.host_reachable.cache_clear()


def test_reachable_host(monkeypatch):
    for name in runtime.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        runtime.host_reachable.cache_clear()
        assert runtime.downloads_allowed(f"http://127.0.0.1:{port}/x")
    runtime.host_reachable.cache_clear()


def test_device_and_dtype():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device(None) == runtime.resolve_device("auto")
    assert runtime.resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert runtime.resolve_dtype("torch.bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'float64'"):
        runtime.resolve_dtype("float64")


def test_config_dir_is_the_checkout_conf():
    folder = runtime.config_dir()
    assert (folder / "config.yaml").is_file() and folder.name == "conf"
    assert folder.parent == runtime.Path(runtime.__file__).resolve().parents[1]

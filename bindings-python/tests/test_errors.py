"""Errors: typed, worded to say what was wrong and what would be valid."""

from __future__ import annotations

import builtins
import json
import socket
from pathlib import Path
from typing import Any, Dict

import pytest
from conftest import Rendezvous, forge_offer, room

import stunfwd
from stunfwd._errors import _from_native

BASE: Dict[str, Any] = {
    "mode": "client",
    "room": "r",
    "signalUrl": "http://127.0.0.1:9/",
    "bind": "127.0.0.1:0",
}


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"signalUrl": "ftp://example.org/"}, "signalUrl"),
        ({"mode": "sideways"}, "mode"),
        ({"mappings": ["tcp:8080:22", "tcp:99999:22"]}, "mappings[1]"),
        ({"performance": {"stunCache": "soon"}}, "performance.stunCache"),
        ({"colour": "blue"}, "colour"),
        ({"bind": "localhost"}, "bind"),
    ],
)
def test_config_error_names_the_key(change: Dict[str, Any], key: str) -> None:
    with pytest.raises(stunfwd.ConfigError) as caught:
        stunfwd.Engine({**BASE, **change})
    err = caught.value
    assert err.key == key
    assert err.code == "ERR_CONFIG"
    assert f"`{key}`" in str(err)
    assert "valid: " in str(err)
    assert err.expected and err.expected in str(err)
    assert isinstance(err, ValueError)


def test_a_server_without_a_secret_is_refused_unless_insecure() -> None:
    with pytest.raises(stunfwd.ConfigError) as caught:
        stunfwd.Engine({**BASE, "mode": "server"})
    assert caught.value.key == "secret"
    assert '"insecure": true' in str(caught.value)
    engine = stunfwd.Engine({**BASE, "mode": "server", "insecure": True})
    try:
        assert engine.stats()["insecure"] is True
    finally:
        engine.stop()


def test_missing_key_is_named() -> None:
    with pytest.raises(stunfwd.ConfigError) as caught:
        stunfwd.Engine({"mode": "client", "signalUrl": "http://127.0.0.1:9/"})
    assert caught.value.key == "room"


def test_json_string_and_file_configs(tmp_path: Path) -> None:
    with pytest.raises(stunfwd.ConfigError) as caught:
        stunfwd.Engine('{"mode": "client", "room": }')
    assert caught.value.key == "(document)"
    assert "line 1" in str(caught.value)

    path = tmp_path / "bad.yaml"
    path.write_text("mode: client\nroom: r\nsignalUrl: http://127.0.0.1:9/\npunchTimeout: forever\n")
    with pytest.raises(stunfwd.ConfigError) as caught:
        stunfwd.Engine(path)
    assert caught.value.key == "punchTimeout"

    good = tmp_path / "good.json"
    good.write_text(json.dumps(BASE))
    with stunfwd.Engine(str(good)) as engine, stunfwd.Engine(json.dumps(BASE)) as other:
        assert engine.state is not stunfwd.State.STOPPED
        assert other.local_addr[0] == "127.0.0.1"


def test_unreadable_config_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(stunfwd.IoError) as caught:
        stunfwd.Engine(tmp_path / "missing.json")
    assert isinstance(caught.value, OSError)
    assert "missing.json" in str(caught.value)


def test_value_json_cannot_hold_names_its_key() -> None:
    with pytest.raises(stunfwd.ConfigError) as caught:
        stunfwd.Engine({**BASE, "performance": {"workers": {1, 2}}})
    assert caught.value.key == "performance.workers"
    with pytest.raises(TypeError, match="dict, a JSON string or a path"):
        stunfwd.Engine(42)  # type: ignore[arg-type]


def test_bad_mapping_spec_names_the_key() -> None:
    with stunfwd.Engine(BASE) as engine:
        with pytest.raises(stunfwd.ConfigError) as caught:
            engine.add_mapping("tcp:eighty:22")
        assert caught.value.key == "mapping"
        assert "tcp:LOCAL:REMOTE" in str(caught.value)
        with pytest.raises(stunfwd.NoSuchMappingError) as missing:
            engine.remove_mapping(4242)
        assert missing.value.mapping_id == 4242
        assert isinstance(missing.value, LookupError)


def test_port_in_use_names_the_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(stunfwd.AddressInUseError) as caught:
            stunfwd.Engine({**BASE, "mappings": [f"tcp:{port}:22"]})
        assert caught.value.port == port
        assert caught.value.address == f"127.0.0.1:{port}"
        assert str(port) in str(caught.value)
        assert isinstance(caught.value, OSError)


def test_signal_server_address_errors() -> None:
    with pytest.raises(stunfwd.ConfigError) as caught:
        stunfwd.SignalServer(http="not an address")
    assert caught.value.key == "http"
    with stunfwd.SignalServer(stun=None) as server:
        assert server.stun_addr is None
        with pytest.raises(stunfwd.AddressInUseError):
            stunfwd.SignalServer(http=server.http_addr)


def test_timeout_is_also_the_builtin_timeout(rendezvous: Rendezvous) -> None:
    # A client whose peer never comes.
    with stunfwd.Engine(rendezvous.config("client", room())) as engine:
        with pytest.raises(stunfwd.TimeoutError) as caught:
            engine.wait_connected(0.5)
        assert isinstance(caught.value, builtins.TimeoutError)
        assert "not connected after 500ms" in str(caught.value)
        assert "state: " in str(caught.value)
        with pytest.raises(ValueError, match="timeout"):
            engine.wait_connected(-1)


def test_wrong_secret_times_out_and_says_what_to_check(rendezvous: Rendezvous) -> None:
    # Peers with different secrets meet in different mailboxes and never see each other.
    name = room()
    with stunfwd.Engine(rendezvous.config("server", name, secret="one")) as server, \
            stunfwd.Engine(rendezvous.config("client", name, secret="two")) as client:
        with pytest.raises(stunfwd.TimeoutError) as caught:
            client.wait_connected(2)
        assert "secret" in str(caught.value)
        assert server.state is not stunfwd.State.CONNECTED


def test_forged_offer_is_a_peer_auth_error(rendezvous: Rendezvous) -> None:
    # A rendezvous operator rewrites the client's offer; the waiting server refuses it.
    name = room()
    with stunfwd.Engine(rendezvous.config("server", name, secret="one")) as server:
        forge_offer(rendezvous.server.url, name, "one", "client")
        with pytest.raises(stunfwd.PeerAuthError) as caught:
            server.wait_connected(3)
        assert caught.value.code == "ERR_PEER_AUTH"
        assert "authentication" in str(caught.value)
        assert server.state is stunfwd.State.SIGNALING


def test_calls_after_stop_raise_stopped(rendezvous: Rendezvous) -> None:
    engine = stunfwd.Engine(rendezvous.config("client", room(), mappings=("tcp:0:22",)))
    engine.stop()
    engine.stop()  # idempotent
    with pytest.raises(stunfwd.StoppedError):
        engine.add_mapping("tcp:0:22")
    with pytest.raises(stunfwd.StoppedError):
        engine.remove_mapping(1)
    with pytest.raises(stunfwd.StoppedError):
        engine.wait_connected(1)
    assert engine.state is stunfwd.State.STOPPED
    # The final figures stay readable; the mappings are closed.
    stats = engine.stats()
    assert stats["state"] == {"state": "stopped"}
    assert len(stats["mappings"]) == 1
    assert engine.mappings() == []


def test_every_code_has_a_class() -> None:
    codes = {
        "ERR_CONFIG": stunfwd.ConfigError,
        "ERR_ADDR_IN_USE": stunfwd.AddressInUseError,
        "ERR_PEER_AUTH": stunfwd.PeerAuthError,
        "ERR_TIMEOUT": stunfwd.TimeoutError,
        "ERR_STOPPED": stunfwd.StoppedError,
        "ERR_IO": stunfwd.IoError,
        "ERR_SIGNAL": stunfwd.SignalingError,
        "ERR_STUN": stunfwd.StunError,
        "ERR_NO_SUCH_MAPPING": stunfwd.NoSuchMappingError,
        "ERR_TUNNEL": stunfwd.TunnelError,
        "ERR_NO_PATH": stunfwd.NoPathError,
        "ERR_RELAY": stunfwd.RelayError,
    }
    for code, cls in codes.items():
        assert cls.code == code
        assert issubclass(cls, stunfwd.StunfwdError)
    # A code this version does not know still raises a StunfwdError carrying it.
    unknown = _from_native("ERR_FROM_THE_FUTURE", "something new", {})
    assert type(unknown) is stunfwd.StunfwdError
    assert unknown.code == "ERR_FROM_THE_FUTURE"

"""Fixtures of the interop suite.

* ``server``: a fresh ``Lwm2mServer`` on 127.0.0.1:<ephemeral> per test.
* ``lwm2md``: the real daemon (``$LWM2MD_BIN``) configured against that server, already
  registered. Teardown sends SIGTERM, asserts an exit within 5 s and a de-registration.
  Change configuration keys with ``@pytest.mark.lwm2md_config({"server": {"lifetime": 20}})``.
* ``lwm2md_unstarted``: the same, configured but not started (for start-up scenarios).
* ``client``: the DM client (``EndpointClient``) for the daemon's endpoint.
* ``model``: the OMA object model parsed from the registry XML.

On failure the daemon's log and the server's event log are attached to the report.
"""

from __future__ import annotations

import logging

import pytest

from daemon import REGISTRATION_TIMEOUT, Lwm2md, deep_merge
from lwm2m_model import load_model
from lwm2m_server import EndpointClient, Lwm2mServer

DAEMON_KEY = pytest.StashKey[Lwm2md]()
SERVER_KEY = pytest.StashKey[Lwm2mServer]()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "lwm2md_config(overrides): dict deep-merged into the daemon's TOML configuration"
    )
    logging.getLogger("coap-server").setLevel(logging.WARNING)
    logging.getLogger("coap").setLevel(logging.WARNING)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Attach the daemon log and the server event log to failing reports."""
    report = yield
    if report.failed:
        daemon = item.stash.get(DAEMON_KEY, None)
        if daemon is not None:
            report.sections.append(("lwm2md log", daemon.log_text()[-20000:]))
        server = item.stash.get(SERVER_KEY, None)
        if server is not None:
            report.sections.append(("LwM2M server events", server.describe_events()))
    return report


@pytest.fixture
def model():
    """The OMA object model (parsed once per session)."""
    return load_model()


@pytest.fixture
async def server(request):
    """A started LwM2M server, shut down after the test."""
    srv = await Lwm2mServer().start()
    request.node.stash[SERVER_KEY] = srv
    yield srv
    await srv.stop()


def _config_overrides(request) -> dict:
    overrides: dict = {}
    # iter_markers yields the closest marker first; apply the farthest first so the closest wins.
    for marker in reversed(list(request.node.iter_markers("lwm2md_config"))):
        overrides = deep_merge(overrides, marker.args[0])
    return overrides


async def _stop_daemon(daemon: Lwm2md, server: Lwm2mServer) -> None:
    """SIGTERM; the daemon must exit 0 within 5 s and de-register (unless the test opted out)."""
    if not daemon.running:
        return
    server.resume()
    mark = server.mark()
    status = await daemon.terminate()
    assert status == 0, f"lwm2md exited with status {status} after SIGTERM"
    if daemon.expect_deregistration and daemon.registration is not None:
        # A DELETE for a registration the server has forgotten (answered 4.04) still counts.
        ours = {e.reg_id for e in server.events if e.kind == "register" and e.ep == daemon.endpoint}
        await server.wait_event(
            ("deregister", "deregister-unknown"),
            2.0,
            since=mark,
            predicate=lambda e: e.reg_id in ours,
            what="de-registration on SIGTERM",
        )


@pytest.fixture
async def lwm2md_unstarted(request, server, tmp_path):
    """The daemon, configured but not started: the test calls ``await lwm2md_unstarted.start()``."""
    daemon = Lwm2md(server, tmp_path, _config_overrides(request))
    request.node.stash[DAEMON_KEY] = daemon
    yield daemon
    await _stop_daemon(daemon, server)


@pytest.fixture
async def lwm2md(request, server, tmp_path):
    """The daemon, started and registered; stopped (SIGTERM, ≤ 5 s, de-registration) afterwards."""
    daemon = Lwm2md(server, tmp_path, _config_overrides(request))
    request.node.stash[DAEMON_KEY] = daemon
    await daemon.start()
    try:
        await daemon.wait_registered(REGISTRATION_TIMEOUT)
    except BaseException:
        await daemon.kill()
        raise
    yield daemon
    await _stop_daemon(daemon, server)


@pytest.fixture
def client(lwm2md, server) -> EndpointClient:
    """DM client for the running daemon's endpoint."""
    return server.client(lwm2md.endpoint)


# ----- firmware updates (object 5 with the fake A/B machine; helpers in firmware.py) -----


@pytest.fixture
def signer(tmp_path):
    """The release signing key, trusted by the device."""
    from firmware import make_signer

    return make_signer(tmp_path / "signing", "release")


@pytest.fixture
def revoked_signer(tmp_path):
    """A key the device has revoked (see ``keys_dir``)."""
    from firmware import make_signer

    return make_signer(tmp_path / "signing", "revoked")


@pytest.fixture
def keys_dir(tmp_path, signer, revoked_signer):
    """The device's keys.d: ``release.pub`` (trusted), plus ``revoked.pub`` with a
    ``revoked.pub.revoked`` beside it (revoked although its key file is present)."""
    d = tmp_path / "keys.d"
    d.mkdir()
    (d / "release.pub").write_bytes(signer.pub.read_bytes())
    revoked = revoked_signer
    (d / "revoked.pub").write_bytes(revoked.pub.read_bytes())
    (d / "revoked.pub.revoked").write_bytes(revoked.pub.read_bytes())
    return d


@pytest.fixture
async def fw_unstarted(request, server, tmp_path, keys_dir):
    """The daemon with ``[update]`` on the fake machine (``firmware.firmware_config``), not
    started; ``lwm2md_config`` markers apply on top. Teardown as for ``lwm2md``."""
    from firmware import firmware_config

    overrides = deep_merge(firmware_config(tmp_path, keys_dir), _config_overrides(request))
    daemon = Lwm2md(server, tmp_path, overrides)
    request.node.stash[DAEMON_KEY] = daemon
    yield daemon
    await _stop_daemon(daemon, server)


@pytest.fixture
async def fw_daemon(fw_unstarted, server):
    """``fw_unstarted``, started and registered (slot A running, never updated)."""
    daemon = fw_unstarted
    await daemon.start()
    try:
        await daemon.wait_registered(REGISTRATION_TIMEOUT)
    except BaseException:
        await daemon.kill()
        raise
    return daemon

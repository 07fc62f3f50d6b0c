"""Fixtures of the interop suite.

* ``server``: a fresh ``Lwm2mServer`` on 127.0.0.1:<ephemeral> per test.
* ``lwm2md``: the real daemon (``$LWM2MD_BIN``) configured against that server, already
  registered. Teardown sends SIGTERM, asserts an exit within 5 s and a de-registration.
  Change configuration keys with ``@pytest.mark.lwm2md_config({"server": {"lifetime": 20}})``.
* ``lwm2md_unstarted``: the same, configured but not started (for start-up scenarios).
* ``client``: the DM client (``EndpointClient``) for the daemon's endpoint.
* ``model``: the OMA object model parsed from the registry XML.
* ``dtls_front``: ``None``, or with ``@pytest.mark.dtls("psk" | "certificate", **options)`` a
  ``DtlsFront`` (mbedTLS) in front of ``server``; ``lwm2md`` / ``lwm2md_unstarted`` then talk to
  it over ``coaps://`` (options: ``dtls_front.start_test_front``). The front is set up before and
  torn down after the daemon, so the SIGTERM de-registration still goes over DTLS.
* ``bootstrap_server``: a fresh ``BootstrapServer`` (``/bs``) on 127.0.0.1:<ephemeral>.
* ``bs_unstarted``: the daemon with ``[bootstrap]`` → ``bootstrap_server`` and no ``[[server]]``
  (``daemon.bootstrap_config``), not started; markers apply on top; ``server`` is the server
  its Register is awaited at (``wait_registered``) and teardown checks the de-registration at.
* ``server2``: a second ``Lwm2mServer`` (multi-server and Access Control tests).

On failure the daemon's log and the server's event log are attached to the report.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest

from bootstrap_server import BootstrapServer
from daemon import REGISTRATION_TIMEOUT, Lwm2md, bootstrap_config, deep_merge
from lwm2m_model import load_model
from lwm2m_server import EndpointClient, Lwm2mServer

if TYPE_CHECKING:  # python-mbedtls is imported only by tests that use a DTLS front
    from dtls_front import DtlsFront

DAEMON_KEY = pytest.StashKey[Lwm2md]()
SERVER_KEY = pytest.StashKey[Lwm2mServer]()
FRONT_KEY = pytest.StashKey["DtlsFront"]()
BOOTSTRAP_KEY = pytest.StashKey[BootstrapServer]()
SERVER2_KEY = pytest.StashKey[Lwm2mServer]()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "lwm2md_config(overrides): dict deep-merged into the daemon's TOML configuration"
    )
    config.addinivalue_line(
        "markers",
        "dtls(mode, **options): put a DTLS front (dtls_front.start_test_front) before the server "
        "and point the daemon at it",
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
        front = item.stash.get(FRONT_KEY, None)
        if front is not None:
            report.sections.append(("DTLS front", front.describe()))
        bootstrap = item.stash.get(BOOTSTRAP_KEY, None)
        if bootstrap is not None:
            report.sections.append(("Bootstrap-Server events", bootstrap.describe_events()))
        server2 = item.stash.get(SERVER2_KEY, None)
        if server2 is not None:
            report.sections.append(("second LwM2M server events", server2.describe_events()))
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


@pytest.fixture
async def dtls_front(request, server, tmp_path):
    """None, or (with a ``dtls`` marker) a started DTLS front before ``server``."""
    marker = request.node.get_closest_marker("dtls")
    if marker is None:
        yield None
        return
    from dtls_front import start_test_front

    upstream = ("127.0.0.1", server.port)
    front = await start_test_front(upstream, tmp_path / "dtls", *marker.args, **marker.kwargs)
    request.node.stash[FRONT_KEY] = front
    yield front
    await front.stop()


def _config_overrides(request, front: DtlsFront | None = None) -> dict:
    """The DTLS front's ``[[server]]`` keys (if any), then the ``lwm2md_config`` markers."""
    overrides: dict = {"server": front.client_config} if front is not None else {}
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
async def lwm2md_unstarted(request, server, tmp_path, dtls_front):
    """The daemon, configured but not started: the test calls ``await lwm2md_unstarted.start()``."""
    daemon = Lwm2md(server, tmp_path, _config_overrides(request, dtls_front))
    request.node.stash[DAEMON_KEY] = daemon
    yield daemon
    await _stop_daemon(daemon, server)


@pytest.fixture
async def lwm2md(request, server, tmp_path, dtls_front):
    """The daemon, started and registered; stopped (SIGTERM, ≤ 5 s, de-registration) afterwards."""
    daemon = Lwm2md(server, tmp_path, _config_overrides(request, dtls_front))
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


# ----- bootstrap (tests/interop/test_bootstrap.py) -----


@pytest.fixture
async def bootstrap_server(request):
    """A started Bootstrap-Server, shut down after the test."""
    bs = await BootstrapServer().start()
    request.node.stash[BOOTSTRAP_KEY] = bs
    yield bs
    await bs.stop()


@pytest.fixture
async def server2(request):
    """A second LwM2M server, shut down after the test."""
    srv = await Lwm2mServer().start()
    request.node.stash[SERVER2_KEY] = srv
    yield srv
    await srv.stop()


@pytest.fixture
async def bs_unstarted(request, server, bootstrap_server, tmp_path):
    """The daemon with the factory Bootstrap-Server account and no ``[[server]]``, not started.

    ``lwm2md_config`` markers merge on top (``{"bootstrap": {"hold_off": 2}}``); a test that
    needs a factory server sets ``daemon.config["server"]`` before ``start()``. Teardown as for
    ``lwm2md`` (the de-registration is checked at ``server`` if the test set ``registration``).
    """
    overrides = deep_merge(bootstrap_config(bootstrap_server.uri), _config_overrides(request))
    daemon = Lwm2md(server, tmp_path, overrides)
    request.node.stash[DAEMON_KEY] = daemon
    yield daemon
    await _stop_daemon(daemon, server)

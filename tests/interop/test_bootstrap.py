"""Bootstrap interface (ETS 1.1-int-0 … int-9), persistence of bootstrapped accounts, and the
Access Control rules that apply once a Bootstrap-Server has provisioned two servers.

The daemon starts with the factory Bootstrap-Server account (``[bootstrap]`` → the
``bootstrap_server`` fixture, ``hold_off = 0``, ``fallback_after = 3``, ``timeout = 247``) and,
unless a test adds one, no ``[[server]]``: it sends ``POST /bs?ep=…`` at start. The
Bootstrap-Server (``bootstrap_server.py``) then deletes, writes, reads, discovers and finishes
from its own socket; ``server`` (and ``server2``) are the LwM2M servers it provisions.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
import socket
import stat
import subprocess

import pytest
from aiocoap import Context, Message
from aiocoap.numbers.codes import Code

import coap_raw
from bootstrap_server import (
    ACL_EXECUTE,
    ACL_READ,
    ACL_WRITE,
    AccessControl,
    BootstrapServer,
    BsResponse,
    ServerAccount,
)
from daemon import Lwm2md, server_table
from lwm2m_codecs import CF_SENML_CBOR, CF_SENML_JSON, CF_TEXT, CF_TLV
from lwm2m_model import parse_path
from lwm2m_server import Event, Lwm2mServer, objects_from_links

#: Lifetime the Bootstrap-Server provisions (differs from the factory 300 s so a Register shows
#: which account it came from).
BS_LIFETIME = 60
#: Formats a 1.1 client may name in ``pct`` (TLV, SenML JSON, SenML CBOR).
PREFERRED_FORMATS = {str(CF_TLV), str(CF_SENML_JSON), str(CF_SENML_CBOR)}
RWE = ACL_READ | ACL_WRITE | ACL_EXECUTE


# --- helpers -----------------------------------------------------------------------------------


def assert_bootstrap_request(ev: Event, daemon: Lwm2md) -> None:
    """``POST /bs?ep=<endpoint>[&pct=<cf>]`` as a CON, nothing else in the query."""
    assert (ev.method, ev.path, ev.mtype) == ("POST", "/bs", "CON"), str(ev)
    assert ev.params.get("ep") == daemon.endpoint, f"ep={ev.params.get('ep')!r}, expected {daemon.endpoint!r}"
    assert set(ev.params) <= {"ep", "pct"}, f"unexpected Bootstrap-Request parameters {ev.params}"
    if "pct" in ev.params:
        assert ev.params["pct"] in PREFERRED_FORMATS, (
            f"pct={ev.params['pct']} is not a format a 1.1 client serves"
        )


async def start_bootstrap(daemon: Lwm2md, bs: BootstrapServer, timeout: float = 10.0) -> Event:
    """Start the daemon and return its (checked) first Bootstrap-Request."""
    await daemon.start()
    ev = await daemon.wait_bootstrap_request(bs, timeout)
    assert_bootstrap_request(ev, daemon)
    return ev


async def ok(operation, code: str, what: str) -> BsResponse:
    """Await a BS operation and assert its response code."""
    resp = await operation
    assert resp.code == code, f"{what}: expected {code}, got {resp}"
    return resp


def free_iid(disc: BsResponse, oid: int) -> int:
    """The lowest instance id of ``oid`` a Bootstrap-Discover did not list."""
    used = disc.instances(oid)
    return next(i for i in range(65535) if i not in used)


def bootstrap_account_iid(disc: BsResponse, bs: BootstrapServer) -> int:
    """The Bootstrap-Server account in a Discover of / or /0: the one /0 instance without
    ``ssid``, with ``uri`` = the configured Bootstrap-Server URI."""
    candidates = [iid for iid, attrs in disc.instances(0).items() if "ssid" not in attrs]
    assert len(candidates) == 1, (
        f"expected exactly one /0 instance without ssid (the BS account): {disc.text}"
    )
    attrs = disc.instances(0)[candidates[0]]
    assert attrs.get("uri") == bs.uri, f"BS account uri={attrs.get('uri')!r}, configured {bs.uri!r}"
    return candidates[0]


def assert_discover_shape(disc: BsResponse, what: str) -> None:
    """2.05 link format that starts with ``</>;lwm2m=1.1`` and goes no deeper than instances."""
    assert disc.code == "2.05", f"{what}: {disc}"
    links = disc.links
    assert links and links[0].href == "/", f"{what}: must start with </>: {disc.text}"
    # Examples in the specifications quote the value (lwm2m="1.1") or not; both forms pass.
    assert links[0].get("lwm2m") == "1.1", f"{what}: </> must carry lwm2m=1.1: {disc.text}"
    hrefs = [link.href for link in links]
    assert len(hrefs) == len(set(hrefs)), f"{what}: duplicate links: {hrefs}"
    for href in hrefs[1:]:
        depth = len([p for p in href.split("/") if p])
        assert 1 <= depth <= 2, f"{what}: <{href}> is not an object or an instance: {disc.text}"


def account(srv: Lwm2mServer, ssid: int = 1, lifetime: int = BS_LIFETIME, **kw) -> ServerAccount:
    return ServerAccount(ssid=ssid, uri=srv.uri, lifetime=lifetime, **kw)


async def read_value(client, path: str) -> str:
    resp = await client.read(path, CF_TEXT)
    assert resp.code == "2.05", f"Read {path} → {resp}"
    return resp.text


def secret_forms(secret: bytes) -> list[str]:
    """How a secret could show up in a log: raw, hex, base64, a Rust byte-slice Debug prefix."""
    b64 = base64.b64encode(secret).decode()
    return [
        secret.decode("latin-1"),
        secret.hex(),
        secret.hex().upper(),
        b64,
        b64.rstrip("="),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        "[" + ", ".join(str(b) for b in secret[:8]),
    ]


# --- client-initiated bootstrap -------------------------------------------------------------


async def test_int_0_client_initiated_bootstrap(bs_unstarted, bootstrap_server, server):
    """int-0: Bootstrap-Request → Delete / → Write /0/x, /1/x → Discover shows them → Finish
    2.04 → Register at the provisioned server with the provisioned lifetime, nothing before."""
    bs, daemon = bootstrap_server, bs_unstarted
    await start_bootstrap(daemon, bs)
    await ok(bs.delete("/"), "2.02", "Bootstrap-Delete /")
    before = await bs.discover("/")
    assert_discover_shape(before, "Discover / after Delete /")
    bs_iid = bootstrap_account_iid(before, bs)
    sec_iid, srv_iid = free_iid(before, 0), free_iid(before, 1)
    acc = account(server)
    await ok(bs.write(f"/0/{sec_iid}", acc.security_values(), "tlv"), "2.04", f"Write /0/{sec_iid}")
    await ok(bs.write(f"/1/{srv_iid}", acc.server_values(), "tlv"), "2.04", f"Write /1/{srv_iid}")

    disc = await bs.discover("/")
    assert_discover_shape(disc, "Discover / after the writes")
    security = disc.instances(0)
    assert set(security) == {bs_iid, sec_iid}, disc.text
    assert (security[sec_iid].get("ssid"), security[sec_iid].get("uri")) == ("1", server.uri), disc.text
    assert list(disc.instances(1)) == [srv_iid], disc.text
    assert disc.instances(1)[srv_iid].get("ssid") == "1", disc.text
    assert 0 in disc.instances(3), f"</3/0> missing: {disc.text}"

    # Nothing may reach the server before Finish (a negative check: give an early Register 0.5 s).
    await server.assert_no_event("register", 0.5, since=0)
    assert not server.wire, f"contact with the server before Bootstrap-Finish: {server.wire[0].message}"
    await ok(bs.finish(), "2.04", "Bootstrap-Finish")
    reg = await daemon.wait_registered()
    assert reg.params["ep"] == daemon.endpoint and reg.params["lt"] == str(BS_LIFETIME), reg.params
    assert objects_from_links(reg.links)[1].instances == [srv_iid], reg.links
    client = server.client(daemon.endpoint)
    assert await read_value(client, f"/1/{srv_iid}/0") == "1"
    assert await read_value(client, f"/1/{srv_iid}/1") == str(BS_LIFETIME)
    assert (await client.read("/0", CF_TLV)).code == "4.01", (
        "the Security object must stay hidden from servers"
    )


async def test_bootstrap_discover_lists_objects_instances_ssid_and_uri(
    bs_unstarted, bootstrap_server, server
):
    """Discover / on a fresh client: the BS account (uri, no ssid) and /3/0, no server account;
    Discover /0 and /1 after the writes: instances with ssid (and uri on /0), nothing else."""
    bs, daemon = bootstrap_server, bs_unstarted
    await start_bootstrap(daemon, bs)
    fresh = await bs.discover("/")
    assert_discover_shape(fresh, "Discover / before any write")
    bs_iid = bootstrap_account_iid(fresh, bs)
    assert fresh.instances(1) == {}, f"no [[server]] configured, yet /1 has instances: {fresh.text}"
    assert list(fresh.instances(3)) == [0], f"expected </3/0>: {fresh.text}"
    assert fresh.instances(0)[bs_iid].get("ssid") is None

    prov = await bs.provision([account(server, ssid=7)], delete=False, finish=False)
    sec_iid, srv_iid = prov.accounts[7]
    for path in ("/0", "/1"):
        disc = await bs.discover(path)
        assert_discover_shape(disc, f"Discover {path}")
        oid = int(path[1:])
        others = [link.href for link in disc.links[1:] if parse_path(link.href)[0] != oid]
        assert not others, f"Discover {path} lists other objects: {others}"
    sec = (await bs.discover("/0")).instances(0)
    assert set(sec) == {bs_iid, sec_iid}
    assert sec[sec_iid].get("ssid") == "7" and sec[sec_iid].get("uri") == server.uri, sec
    srv = (await bs.discover("/1")).instances(1)
    assert list(srv) == [srv_iid] and srv[srv_iid].get("ssid") == "7", srv

    await ok(bs.finish(), "2.04", "Bootstrap-Finish")
    await daemon.wait_registered()


async def test_delete_root_keeps_bootstrap_account_and_device(bs_unstarted, bootstrap_server, server):
    """Delete / removes every /0, /1, /2 instance except the Bootstrap-Server account; /3/0 stays."""
    bs, daemon = bootstrap_server, bs_unstarted
    await start_bootstrap(daemon, bs)
    acl = AccessControl(3, 0, {1: RWE}, owner=1)
    prov = await bs.provision([account(server)], [acl], delete=False, finish=False)
    full = await bs.discover("/")
    assert len(full.instances(0)) == 2 and len(full.instances(1)) == 1, full.text
    assert prov.acl_iids[0] in full.instances(2), f"the ACL instance is not listed: {full.text}"

    await ok(bs.delete("/"), "2.02", "Bootstrap-Delete /")
    after = await bs.discover("/")
    assert_discover_shape(after, "Discover / after Delete /")
    bootstrap_account_iid(after, bs)
    assert len(after.instances(0)) == 1, f"server accounts survived Delete /: {after.text}"
    assert after.instances(1) == {} and after.instances(2) == {}, f"instances survived Delete /: {after.text}"
    assert list(after.instances(3)) == [0], f"/3/0 must survive Delete /: {after.text}"

    await bs.provision([account(server)])
    await daemon.wait_registered()


async def test_int_4_delete_security_and_server_objects_keeps_bootstrap_account(
    bs_unstarted, bootstrap_server, server
):
    """int-4: Delete /0 and Delete /1 remove the server accounts; the BS account is untouched
    (even by a Delete of its own instance), and the bootstrap goes on to a working account."""
    bs, daemon = bootstrap_server, bs_unstarted
    await start_bootstrap(daemon, bs)
    prov = await bs.provision([account(server, ssid=1), account(server, ssid=2)], delete=True, finish=False)
    (bs_iid,) = prov.bootstrap_iids
    await ok(bs.delete("/0"), "2.02", "Bootstrap-Delete /0")
    await ok(bs.delete("/1"), "2.02", "Bootstrap-Delete /1")
    disc = await bs.discover("/")
    assert list(disc.instances(0)) == [bs_iid], f"only the BS account may remain in /0: {disc.text}"
    assert bootstrap_account_iid(disc, bs) == bs_iid
    assert disc.instances(1) == {}, f"/1 instances survived Delete /1: {disc.text}"

    # The BS account is "not affected by any Delete operation"; the answer code is not specified.
    own = await bs.delete(f"/0/{bs_iid}")
    assert own.code in ("2.02", "4.00", "4.01", "4.05"), f"Delete of the BS account → {own}"
    assert list((await bs.discover("/0")).instances(0)) == [bs_iid], "the BS account was deleted"

    await bs.provision([account(server)], delete=False)
    reg = await daemon.wait_registered()
    assert reg.params["lt"] == str(BS_LIFETIME)


async def test_int_8_bootstrap_read_of_server_and_access_control_objects(
    bs_unstarted, bootstrap_server, server
):
    """int-8: Bootstrap-Read of /1, /1/x, /2, /2/x returns what the BS wrote (TLV and SenML).
    With a single server the ACLs are not enforced: its Write to /3/0, where its ACL says R, works."""
    bs, daemon = bootstrap_server, bs_unstarted
    await start_bootstrap(daemon, bs)
    acls = [AccessControl(1, 0, {1: RWE}, owner=1), AccessControl(3, 0, {1: ACL_READ, 0: ACL_READ}, owner=1)]
    prov = await bs.provision([account(server, server_iid=0)], acls, finish=False)
    _, srv_iid = prov.accounts[1]
    a1, a3 = prov.acl_iids

    expected_server = {
        f"/1/{srv_iid}/0": 1,
        f"/1/{srv_iid}/1": BS_LIFETIME,
        f"/1/{srv_iid}/6": True,
        f"/1/{srv_iid}/7": "U",
    }
    expected_acl = {
        f"/2/{a1}/0": 1,
        f"/2/{a1}/1": 0,
        f"/2/{a1}/2/1": RWE,
        f"/2/{a1}/3": 1,
        f"/2/{a3}/0": 3,
        f"/2/{a3}/1": 0,
        f"/2/{a3}/2/0": ACL_READ,
        f"/2/{a3}/2/1": ACL_READ,
        f"/2/{a3}/3": 1,
    }
    for path, accept, expected in (
        ("/1", CF_TLV, expected_server),
        (f"/1/{srv_iid}", CF_SENML_CBOR, expected_server),
        ("/2", CF_TLV, expected_acl),
        (f"/2/{a3}", CF_SENML_JSON, {k: v for k, v in expected_acl.items() if k.startswith(f"/2/{a3}/")}),
    ):
        resp = await ok(bs.read(path, accept), "2.05", f"Bootstrap-Read {path} (Accept {accept})")
        assert resp.content_format == accept, f"Bootstrap-Read {path}: asked for {accept}, got {resp}"
        values = resp.values
        missing = {k: v for k, v in expected.items() if values.get(k) != v}
        assert not missing, f"Bootstrap-Read {path}: expected {missing}, got {values}"
        if path.startswith("/2"):
            acl_paths = {k for k in values if k.count("/") == 4}
            assert acl_paths == {k for k in expected if k.count("/") == 4}, f"ACL entries differ: {values}"

    await ok(bs.finish(), "2.04", "Bootstrap-Finish")
    await daemon.wait_registered()
    only = server.client(daemon.endpoint)
    assert (await only.write("/3/0/14", b"UTC+01:00", CF_TEXT)).code == "2.04", (
        "a single server: Access Control must not be enforced"
    )


async def test_bootstrap_read_of_security_and_device_objects_is_unauthorized(
    bs_unstarted, bootstrap_server, server
):
    """Bootstrap-Read targets /1 and /2 only: /0 (secrets) and /3 answer 4.01."""
    bs, daemon = bootstrap_server, bs_unstarted
    await start_bootstrap(daemon, bs)
    secret = ServerAccount(
        ssid=1, uri="coaps://127.0.0.1:5684", psk_identity="id", psk_key=b"not-for-reading"
    )
    prov = await bs.provision([secret], finish=False)
    sec_iid, _ = prov.accounts[1]
    (bs_iid,) = prov.bootstrap_iids
    for path in ("/0", f"/0/{sec_iid}", f"/0/{bs_iid}", "/3", "/3/0"):
        resp = await bs.read(path, CF_TLV)
        assert resp.code == "4.01", f"Bootstrap-Read {path} → {resp}"
        assert b"not-for-reading" not in resp.payload
    # Replace the PSK account (nothing listens there) with the real server before finishing.
    await bs.provision([account(server)])
    await daemon.wait_registered()


def _partial_server_only(server, sec_iid):
    """int-9: only /1/x/5 (Disable Timeout): no Short Server ID, lifetime, binding, no /0."""
    return [("/1/0/5", {"/1/0/5": 86400})]


def _server_without_matching_security(server, sec_iid):
    """A complete /1 instance for ssid 1, but the /0 account carries ssid 2."""
    acc = account(server, ssid=1)
    return [(f"/0/{sec_iid}", {**acc.security_values(), 10: 2}), ("/1/0", acc.server_values())]


def _server_without_lifetime(server, sec_iid):
    """A /0 account and its /1 instance without the mandatory Lifetime (/1/x/1)."""
    acc = account(server, ssid=1)
    srv = {k: v for k, v in acc.server_values().items() if k != 1}
    return [(f"/0/{sec_iid}", acc.security_values()), ("/1/0", srv)]


def _nothing(server, sec_iid):
    """Nothing at all after Delete /: no usable server account."""
    return []


@pytest.mark.parametrize(
    "writes",
    [_partial_server_only, _server_without_matching_security, _server_without_lifetime, _nothing],
    ids=["int-9-only-disable-timeout", "no-security-for-ssid", "no-lifetime", "no-account"],
)
async def test_int_9_inconsistent_configuration_refused_then_fixed(
    bs_unstarted, bootstrap_server, server, writes
):
    """int-9: Finish on an inconsistent configuration → 4.06 and no Register; after the BS
    corrects it, Finish → 2.04 and the client registers."""
    bs, daemon = bootstrap_server, bs_unstarted
    await start_bootstrap(daemon, bs)
    await ok(bs.delete("/"), "2.02", "Bootstrap-Delete /")
    disc = await bs.discover("/")
    bootstrap_account_iid(disc, bs)
    sec_iid = free_iid(disc, 0)
    for path, values in writes(server, sec_iid):
        await ok(bs.write(path, values, "tlv"), "2.04", f"Bootstrap-Write {path}")
    refused = await bs.finish()
    assert refused.code == "4.06", f"Finish on an inconsistent configuration → {refused}"

    if writes is _partial_server_only:
        # The ETS case: complete the same /1 instance and add its Security instance.
        acc = account(server, ssid=1)
        await ok(bs.write(f"/0/{sec_iid}", acc.security_values()), "2.04", "Bootstrap-Write /0")
        await ok(bs.write("/1/0", acc.server_values()), "2.04", "Bootstrap-Write /1/0")
        await ok(bs.finish(), "2.04", "Bootstrap-Finish after the correction")
    else:
        await bs.provision([account(server)])
    reg = await daemon.wait_registered()
    assert reg.params["lt"] == str(BS_LIFETIME)
    assert len(server.events_of("register")) == 1, server.describe_events()


async def test_write_security_and_server_objects_with_several_instances_per_body(
    bs_unstarted, bootstrap_server, server, server2
):
    """Bootstrap-Write on /0 (one TLV body, two instances) and on /1 (one SenML CBOR body, two
    instances): both accounts appear in Discover and the client registers with both servers."""
    bs, daemon = bootstrap_server, bs_unstarted
    await start_bootstrap(daemon, bs)
    await ok(bs.delete("/"), "2.02", "Bootstrap-Delete /")
    disc = await bs.discover("/")
    bs_iid = bootstrap_account_iid(disc, bs)
    sec_iids = [i for i in range(65535) if i != bs_iid][:2]
    accounts = [account(server, ssid=1, lifetime=61), account(server2, ssid=2, lifetime=62)]
    security = {iid: acc.security_values() for iid, acc in zip(sec_iids, accounts)}
    servers = {iid: acc.server_values() for iid, acc in zip((0, 1), accounts)}
    await ok(bs.write("/0", security, "tlv"), "2.04", "Bootstrap-Write /0 (two instances, TLV)")
    await ok(bs.write("/1", servers, "senml-cbor"), "2.04", "Bootstrap-Write /1 (two instances, SenML CBOR)")

    disc = await bs.discover("/")
    sec = disc.instances(0)
    assert set(sec) == {bs_iid, *sec_iids}, disc.text
    assert {(sec[i].get("ssid"), sec[i].get("uri")) for i in sec_iids} == {
        ("1", server.uri),
        ("2", server2.uri),
    }
    assert {iid: a.get("ssid") for iid, a in disc.instances(1).items()} == {0: "1", 1: "2"}, disc.text

    await ok(bs.finish(), "2.04", "Bootstrap-Finish")
    reg1 = await daemon.wait_registered()
    reg2 = await daemon.watch(server2.wait_registration(10, ep=daemon.endpoint), "registration at server2")
    assert (reg1.params["lt"], reg2.params["lt"]) == ("61", "62")


# --- server-initiated bootstrap, fallback, timing ---------------------------------------------


async def test_int_5_server_initiated_bootstrap(bs_unstarted, bootstrap_server, server):
    """int-5: the registered server executes /1/0/9 → 2.04 → the client sends a
    Bootstrap-Request; the BS replaces the factory account; the client registers with the new one."""
    bs, daemon = bootstrap_server, bs_unstarted
    daemon.config["server"] = [server_table(server.uri)]  # factory account, ssid 1, lifetime 300
    await daemon.start()
    reg = await daemon.wait_registered()
    assert reg.params["lt"] == "300"
    assert not bs.events, f"the client bootstrapped although it could register:\n{bs.describe_events()}"

    client = server.client(daemon.endpoint)
    executed = server.now()
    resp = await client.execute("/1/0/9")
    assert resp.code == "2.04", f"Execute /1/0/9 (Bootstrap-Request Trigger) → {resp}"
    ev = await daemon.wait_bootstrap_request(bs, 10)
    assert_bootstrap_request(ev, daemon)
    assert ev.time - executed < 5, f"Bootstrap-Request {ev.time - executed:.1f} s after the trigger"

    await ok(bs.delete("/"), "2.02", "Bootstrap-Delete /")
    disc = await bs.discover("/")
    assert [a for a in disc.instances(0).values() if a.get("ssid")] == [], (
        f"factory account survived Delete /: {disc.text}"
    )
    assert disc.instances(1) == {}, f"factory /1 instance survived Delete /: {disc.text}"
    mark = server.mark()
    await bs.provision([account(server, lifetime=45)], delete=False)
    new = await daemon.watch(
        server.wait_registration(10, since=mark, ep=daemon.endpoint), "registration after the bootstrap"
    )
    assert new.params["lt"] == "45", f"Register after the bootstrap: {new.params}"
    daemon.registration = new


@pytest.mark.lwm2md_config(
    {
        "coap": {"ack_timeout": 1.0, "ack_random_factor": 1.0, "max_retransmit": 0},
        "registration": {"retry_initial": 1, "retry_max": 2},
        "bootstrap": {"fallback_after": 2},
    }
)
async def test_int_7_fallback_to_bootstrap_after_failed_registrations(bs_unstarted, bootstrap_server, server):
    """int-7: the factory server never answers; after ``fallback_after`` = 2 failed Register
    attempts the client bootstraps, then registers with the server the BS provisions."""
    bs, daemon = bootstrap_server, bs_unstarted
    dead = await Lwm2mServer().start()
    try:
        dead.go_silent()
        daemon.config["server"] = [server_table(dead.uri)]
        await daemon.start()
        ev = await daemon.wait_bootstrap_request(bs, 20)
        assert_bootstrap_request(ev, daemon)
        attempts = [e for e in dead.events if e.kind == "dropped" and e.path == "/rd" and e.time < ev.time]
        mids = {e.mid for e in attempts}
        assert len(mids) == 2, (
            f"expected 2 Register attempts before bootstrapping, got:\n{dead.describe_events()}"
        )
        assert ev.time >= attempts[-1].time + 1.0 - 0.1, (
            f"bootstrapped {ev.time - attempts[-1].time:.2f} s after the last Register was sent, "
            "before it could time out (ack_timeout 1 s)"
        )

        await bs.provision([account(server)])
        finished = dead.mark()
        reg = await daemon.wait_registered()
        assert reg.params["lt"] == str(BS_LIFETIME)
        late = [e for e in dead.events[finished:] if e.path == "/rd"]
        assert not late, f"Register attempts at the deleted factory server after Finish: {late}"
    finally:
        await dead.stop()


@pytest.mark.lwm2md_config({"bootstrap": {"hold_off": 2}})
async def test_client_hold_off_time_delays_the_bootstrap_request(bs_unstarted, bootstrap_server, server):
    """hold_off = 2: nothing reaches the Bootstrap-Server during the first 2 s."""
    bs, daemon = bootstrap_server, bs_unstarted
    started = bs.now()
    await daemon.start()
    ev = await daemon.wait_bootstrap_request(bs, 10)
    assert_bootstrap_request(ev, daemon)
    first = min(r.time for r in bs.wire)
    assert first - started >= 2.0 - 0.1, (
        f"first datagram at the BS {first - started:.2f} s after start (hold_off 2)"
    )
    assert ev.time - started <= 2.0 + 5, f"Bootstrap-Request only {ev.time - started:.1f} s after start"
    await bs.provision([account(server)])
    await daemon.wait_registered()


@pytest.mark.lwm2md_config({"bootstrap": {"timeout": 3}})
async def test_bootstrap_without_finish_fails_after_timeout_and_is_retried(
    bs_unstarted, bootstrap_server, server
):
    """timeout = 3: no Finish within 3 s of the last BS request → the bootstrap failed → a new
    Bootstrap-Request later (never before the 3 s), which can then complete."""
    bs, daemon = bootstrap_server, bs_unstarted
    first = await start_bootstrap(daemon, bs)
    await ok(bs.discover("/"), "2.05", "Bootstrap-Discover /")
    last = bs.now()
    again = await daemon.wait_bootstrap_request(bs, 3 + 15)
    assert_bootstrap_request(again, daemon)
    assert again.mid != first.mid, "the retry must be a new request, not a retransmission"
    assert again.time - last >= 3 - 0.3, (
        f"new Bootstrap-Request {again.time - last:.2f} s after the last BS request"
    )
    await bs.provision([account(server)])
    await daemon.wait_registered()


async def test_refused_bootstrap_request_is_retried(bs_unstarted, bootstrap_server, server):
    """A Bootstrap-Request answered 4.00 is retried later (back-off), and the retry can succeed.
    *(choice: the retry follows the registration back-off, ``retry_initial = 1``)*"""
    bs, daemon = bootstrap_server, bs_unstarted
    bs.request_code = "4.00"
    refused = await start_bootstrap(daemon, bs)
    assert refused.response == "4.00"
    bs.request_code = "2.04"
    accepted = await daemon.wait_bootstrap_request(bs, 15, predicate=lambda e: e.response == "2.04")
    assert accepted.mid != refused.mid
    await bs.provision([account(server)])
    await daemon.wait_registered()


# --- persistence ------------------------------------------------------------------------------


@pytest.mark.lwm2md_config({"bootstrap": {"fallback_after": 0}})
async def test_bootstrapped_accounts_persist_and_win_over_factory_config(
    bs_unstarted, bootstrap_server, server
):
    """A bootstrapped account survives a restart and beats the factory ``[[server]]``: with the
    Bootstrap-Server down, the restarted daemon registers with the provisioned server at once,
    never with the factory one, and never sends anything to the BS. The state file holding the
    accounts is mode 0600, and the PSK the BS wrote never appears in the log."""
    bs, daemon = bootstrap_server, bs_unstarted
    factory = await Lwm2mServer().start()
    sink = await coap_raw.RawUdpPeer().start()  # a DTLS "server" that never answers
    psk = b"bs-psk-" + secrets.token_hex(12).encode()
    try:
        daemon.config["server"] = [server_table(factory.uri)]
        await daemon.start()
        await daemon.watch(
            factory.wait_registration(10, ep=daemon.endpoint), "registration at the factory server"
        )
        assert (await factory.client(daemon.endpoint).execute("/1/0/9")).code == "2.04"
        await daemon.wait_bootstrap_request(bs, 10)
        sink_port = sink.transport.get_extra_info("sockname")[1]
        accounts = [
            account(server, ssid=3, lifetime=45),
            ServerAccount(
                ssid=4, uri=f"coaps://127.0.0.1:{sink_port}", psk_identity="bs-psk-id", psk_key=psk
            ),
        ]
        mark = server.mark()
        await bs.provision(accounts)
        reg = await daemon.watch(server.wait_registration(10, since=mark, ep=daemon.endpoint), "registration")
        assert reg.params["lt"] == "45"
        daemon.registration = reg
        hello = await sink.recv(10)  # the PSK account is in use: a ClientHello (record type 22)
        assert hello is not None and hello[0] == 22, f"no DTLS handshake towards the PSK account: {hello!r}"

        assert await daemon.terminate() == 0
        bs.go_silent()
        restarted = bs.now()
        factory_mark = factory.mark()
        mark = server.mark()
        await daemon.start()
        reg = await daemon.watch(server.wait_registration(10, since=mark, ep=daemon.endpoint), "registration")
        daemon.registration = reg
        assert reg.params["lt"] == "45", f"Register after the restart: {reg.params}"
        await factory.assert_no_event("register", 1.0, since=factory_mark)
        to_bs = [r for r in bs.wire if r.time >= restarted]
        assert not to_bs, (
            f"the restarted daemon contacted the Bootstrap-Server: {[str(r.message) for r in to_bs]}"
        )

        state = daemon.state_dir
        assert stat.S_IMODE(state.stat().st_mode) & 0o077 == 0, f"{state} is open to group or others"
        where = f"127.0.0.1:{server.port}".encode()  # the provisioned URI, however it is stored
        holding = [p for p in state.rglob("*") if p.is_file() and where in p.read_bytes()]
        assert holding, (
            f"no file in {state} holds the bootstrapped account: {sorted(map(str, state.rglob('*')))}"
        )
        for path in (p for p in state.rglob("*") if p.is_file()):
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode & 0o077 == 0, f"{path} has mode {mode:04o}: must not be readable by group or others"
        log = daemon.log_text()
        leaked = [form for form in secret_forms(psk) if form in log]
        assert not leaked, f"the PSK written by the Bootstrap-Server appears in the log as {leaked}"
    finally:
        sink.close()
        await factory.stop()


# --- Access Control with two servers ----------------------------------------------------------


async def _two_servers(daemon, bs, server, server2, acl=()):
    """Bootstrap ssid 1 → ``server`` (/1/0) and ssid 2 → ``server2`` (/1/1), both registered;
    returns (client of server, client of server2, Provisioned)."""
    await start_bootstrap(daemon, bs)
    prov = await bs.provision(
        [account(server, ssid=1, server_iid=0), account(server2, ssid=2, server_iid=1)], list(acl)
    )
    await daemon.wait_registered()
    await daemon.watch(server2.wait_registration(10, ep=daemon.endpoint), "registration at server2")
    return server.client(daemon.endpoint), server2.client(daemon.endpoint), prov


async def test_acl_instance_gives_second_server_read_only_access(
    bs_unstarted, bootstrap_server, server, server2
):
    """ACL on /3/0: ssid 1 RWE, ssid 2 R → ssid 2 reads, its Write gets 4.01; ssid 1 writes."""
    c1, c2, _ = await _two_servers(
        bs_unstarted, bootstrap_server, server, server2, [AccessControl(3, 0, {1: RWE, 2: ACL_READ}, owner=1)]
    )
    denied = await c2.write("/3/0/14", b"UTC+05:00", CF_TEXT)
    assert denied.code == "4.01", f"Write /3/0/14 by ssid 2 (R only) → {denied}"
    assert (await c2.read("/3/0", CF_SENML_CBOR)).code == "2.05", "ssid 2 has R on /3/0"
    assert (await c2.read("/3/0/0", CF_TEXT)).code == "2.05", "ssid 2 has R on /3/0"
    unchanged = await c1.read("/3/0/14", CF_TEXT)  # 4.04 when the host knows no UTC offset
    assert unchanged.payload != b"UTC+05:00", "the refused write changed the value"
    assert (await c1.write("/3/0/14", b"UTC+02:00", CF_TEXT)).code == "2.04"
    assert await read_value(c2, "/3/0/14") == "UTC+02:00"


async def test_default_access_rights_without_access_control_instances(
    bs_unstarted, bootstrap_server, server, server2
):
    """No /2 instance: each server has its own /1 instance; everything else belongs to the
    lowest Short Server ID (ssid 1); ssid 2 gets 4.01 on /3/0 and on ssid 1's /1 instance."""
    daemon = bs_unstarted
    c1, c2, _ = await _two_servers(daemon, bootstrap_server, server, server2)
    assert (await c2.write("/3/0/14", b"UTC+05:00", CF_TEXT)).code == "4.01"
    assert (await c2.read("/3/0/0", CF_TEXT)).code == "4.01"
    assert (await c2.read("/1/0", CF_SENML_CBOR)).code == "4.01", "ssid 2 read ssid 1's Server instance"
    assert (await c1.write("/3/0/14", b"UTC+03:00", CF_TEXT)).code == "2.04"
    assert await read_value(c1, "/3/0/14") == "UTC+03:00"

    assert await read_value(c2, "/1/1/1") == str(BS_LIFETIME)
    mark = server2.mark()
    assert (await c2.write("/1/1/1", b"50", CF_TEXT)).code == "2.04", "ssid 2 may write its own lifetime"
    update = await daemon.watch(server2.wait_update(5, since=mark), "Update after the lifetime write")
    assert update.params.get("lt") == "50"


async def test_access_control_instance_is_writable_only_by_its_owner(
    bs_unstarted, bootstrap_server, server, server2
):
    """/2 instances are readable by every server and writable by their owner only; the owner's
    change takes effect (ssid 2 gains W on /3/0)."""
    c1, c2, prov = await _two_servers(
        bs_unstarted, bootstrap_server, server, server2, [AccessControl(3, 0, {1: RWE, 2: ACL_READ}, owner=1)]
    )
    (a,) = prov.acl_iids
    seen = await c2.read(f"/2/{a}", CF_SENML_CBOR)
    assert seen.code == "2.05", f"Read /2/{a} by ssid 2 → {seen}"
    assert seen.decode().get(f"/2/{a}/3") == 1, seen.decode()
    grant = {f"/2/{a}/2/1": RWE, f"/2/{a}/2/2": RWE}
    denied = await c2.write_values(f"/2/{a}/2", grant, "tlv")
    assert denied.code == "4.01", f"ssid 2 rewrote the ACL it does not own → {denied}"
    assert (await c2.write("/3/0/14", b"UTC+05:00", CF_TEXT)).code == "4.01"
    assert (await c1.write_values(f"/2/{a}/2", grant, "tlv")).code == "2.04", "the owner may change the ACL"
    assert (await c2.write("/3/0/14", b"UTC+05:00", CF_TEXT)).code == "2.04", "W granted by the owner"


# --- DTLS ------------------------------------------------------------------------------------


async def test_int_1_bootstrap_psk_account_then_register_over_dtls(bs_unstarted, bootstrap_server, server):
    """int-1: the BS writes a PSK account (mode 0, identity, key) for a DTLS server (the mbedTLS
    front before ``server``); the client registers through it; the key is never logged."""
    pytest.importorskip("mbedtls", reason="python-mbedtls (tests/interop/requirements.txt) is missing")
    from dtls_front import DtlsFront

    bs, daemon = bootstrap_server, bs_unstarted
    identity, key = "bs-provisioned", secrets.token_hex(16).encode()
    front = await DtlsFront(("127.0.0.1", server.port), psk={identity: key}).start()
    try:
        await start_bootstrap(daemon, bs)
        await bs.provision([ServerAccount(ssid=1, uri=front.uri, psk_identity=identity, psk_key=key)])
        try:  # the provisioned URI is the front's: the only way to reach `server`
            await daemon.wait_registered(15)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- DTLS front ---\n{front.describe()}") from None
        resp = await server.client(daemon.endpoint).read("/3/0/0", CF_TEXT)
        assert resp.code == "2.05", f"Read over DTLS → {resp}"
        front.assert_encrypted(daemon.endpoint.encode())
        leaked = [form for form in secret_forms(key) if form in daemon.log_text()]
        assert not leaked, f"the PSK appears in the log as {leaked}"
        assert await daemon.terminate() == 0  # de-register over DTLS while the front is still up
        await server.wait_deregistration(3, ep=daemon.endpoint)
    finally:
        await front.stop()


async def _coap_get(ctx: Context, uri: str, timeout: float) -> Message | None:
    try:
        return await asyncio.wait_for(ctx.request(Message(code=Code.GET, uri=uri)).response, timeout)
    except Exception:  # timeout, ICMP refusal, anything: "not answering"
        return None


async def _start_libcoap_rd(ctx: Context, key: str) -> tuple[subprocess.Popen, int]:
    """coap-rd-openssl with PSK ``key``: plain CoAP on P, DTLS on P+1 (libcoap binds P+1 itself,
    so the pair is tried until the RD holds both, as tests/dtls.rs does)."""
    binary = shutil.which("coap-rd-openssl")
    if binary is None:
        pytest.skip("coap-rd-openssl (Debian libcoap3-bin) is not installed")
    for _ in range(10):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        proc = subprocess.Popen(
            [binary, "-A", "127.0.0.1", "-p", str(port), "-k", key, "-v", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(25):
            if await _coap_get(ctx, f"coap://127.0.0.1:{port}/.well-known/core", 0.2) is not None:
                break
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            return proc, port  # the RD holds the DTLS port
        proc.kill()
        proc.wait()
    pytest.fail("coap-rd-openssl: no pair of free UDP ports")


async def _rd_registrations(ctx: Context, port: int) -> list[str]:
    """The ``</rd/…>`` entries coap-rd lists in /.well-known/core (plain CoAP on ``port``)."""
    resp = await _coap_get(ctx, f"coap://127.0.0.1:{port}/.well-known/core", 2)
    text = resp.payload.decode(errors="replace") if resp is not None else ""
    return [part for part in text.split(",") if part.startswith("</rd/")]


async def test_bootstrap_psk_account_registers_with_libcoap_over_dtls(bs_unstarted, bootstrap_server, server):
    """The same against libcoap's resource directory (OpenSSL), an independent DTLS stack; the
    registration shows up as an ``</rd/…>`` entry of the RD. Skips without libcoap3-bin."""
    bs, daemon = bootstrap_server, bs_unstarted
    key = "rd-" + secrets.token_hex(12)
    ctx = await Context.create_client_context()
    proc = None
    try:
        proc, port = await _start_libcoap_rd(ctx, key)
        assert await _rd_registrations(ctx, port) == []
        await start_bootstrap(daemon, bs)
        await bs.provision(
            [
                ServerAccount(
                    ssid=1, uri=f"coaps://127.0.0.1:{port + 1}", psk_identity="bs-rd", psk_key=key.encode()
                )
            ]
        )
        deadline = bs.now() + 15
        while not await _rd_registrations(ctx, port):  # libcoap has no event to wait on: poll
            assert bs.now() < deadline, f"no registration at coap-rd within 15 s\n{daemon.log_text()[-3000:]}"
            await asyncio.sleep(0.2)
        leaked = [form for form in secret_forms(key.encode()) if form in daemon.log_text()]
        assert not leaked, f"the PSK appears in the log as {leaked}"
        assert await daemon.terminate() == 0  # while the RD is still there for the De-register
    finally:
        await ctx.shutdown()
        if proc is not None:
            proc.terminate()
            proc.wait(5)

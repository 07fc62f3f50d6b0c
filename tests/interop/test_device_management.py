"""Device Management & Service Enablement: Read, Write, Execute, Create, Delete and their errors.

ETS ids: 1.1-int-201 … 256, 241, 656, 680, 685. ETS 204 reads LwM2M JSON, which a 1.1 client
must not send; its SenML equivalents (ETS 231 / 232) are used instead.
"""

from __future__ import annotations

import pytest

from daemon import DEVICE, LIFETIME
from helpers import (
    EXPECTED_DEVICE,
    EXPECTED_SERVER,
    assert_same_values,
    assert_time_near_now,
    read_ok,
    read_text,
    wait_for_file,
)
from lwm2m_codecs import (
    CF_CBOR,
    CF_JSON,
    CF_LWM2M_JSON,
    CF_SENML_CBOR,
    CF_SENML_JSON,
    CF_TEXT,
    CF_TLV,
    encode_cbor,
    encode_senml_cbor,
    encode_tlv,
)
from lwm2m_model import parse_path


def advertised_formats(lwm2md) -> set[int]:
    """Content formats in the Register payload's ``</>;ct=``."""
    root = next(link for link in lwm2md.registration.links if link.href == "/")
    return {int(x) for x in (root.get("ct") or "").split(" ") if x}


def assert_device_values(values: dict, model) -> None:
    """Configured /3/0 values, only readable resources, all mandatory readable ones present."""
    for path, expected in EXPECTED_DEVICE.items():
        assert values.get(path) == expected, f"{path}: {values.get(path)!r}, expected {expected!r}"
    for path in values:
        res = model.resource(path)
        assert res is not None and res.readable, f"Read returned non-readable {path}"
    for rid, res in model.object(3).resources.items():
        if res.mandatory and res.readable:
            assert any(parse_path(p)[2] == rid for p in values), f"mandatory /3/0/{rid} missing"
    errors = {p: v for p, v in values.items() if p.startswith("/3/0/11/")}
    assert errors and all(isinstance(v, int) and 0 <= v <= 32 for v in errors.values()), errors
    if "/3/0/13" in values:
        assert_time_near_now(values["/3/0/13"])


# --- reads -----------------------------------------------------------------------------------


async def test_int_201_read_device_resources_as_text(client):
    """Read /3/0/0, 1, 2 (and the other configured strings) as text/plain."""
    for path, expected in EXPECTED_DEVICE.items():
        assert await read_text(client, path) == expected, path


async def test_int_203_read_device_instance_tlv(client, model):
    """Read /3/0 as TLV (flat resource TLVs for an instance path)."""
    assert_device_values(await read_ok(client, "/3/0", CF_TLV), model)


async def test_int_231_read_device_instance_senml_json(client, model):
    """ETS 204 equivalent for 1.1: Read /3/0 as SenML JSON."""
    assert_device_values(await read_ok(client, "/3/0", CF_SENML_JSON), model)


async def test_int_232_read_device_instance_senml_cbor(client, model):
    """Read /3/0 as SenML CBOR."""
    assert_device_values(await read_ok(client, "/3/0", CF_SENML_CBOR), model)


async def test_read_formats_agree(lwm2md, client):
    """TLV, SenML JSON, SenML CBOR and per-resource text (and CBOR 60 if offered) decode equal."""
    tlv = await read_ok(client, "/3/0", CF_TLV)
    senml_json = await read_ok(client, "/3/0", CF_SENML_JSON)
    senml_cbor = await read_ok(client, "/3/0", CF_SENML_CBOR)
    text = {}
    for path in tlv:
        text.update(await read_ok(client, path, CF_TEXT))
    assert_same_values(tlv, senml_json, "TLV vs SenML JSON")
    assert_same_values(tlv, senml_cbor, "TLV vs SenML CBOR")
    assert_same_values(tlv, text, "TLV vs text/plain per resource")
    if CF_CBOR in advertised_formats(lwm2md):
        cbor = {}
        for path in tlv:
            cbor.update(await read_ok(client, path, CF_CBOR))
        assert_same_values(tlv, cbor, "TLV vs CBOR per resource")


async def test_read_single_resource_without_accept_is_text(client):
    resp = await client.read("/3/0/0")
    assert (resp.code, resp.content_format, resp.text) == ("2.05", CF_TEXT, DEVICE["manufacturer"])
    resp = await client.read("/1/0/1")
    assert (resp.code, resp.content_format, resp.text) == ("2.05", CF_TEXT, str(LIFETIME))


@pytest.mark.parametrize(
    "expected_cf",
    [
        pytest.param(CF_SENML_CBOR, id="default"),
        pytest.param(
            CF_SENML_JSON,
            marks=pytest.mark.lwm2md_config({"server": {"content_format": "senml-json"}}),
            id="senml-json",
        ),
        pytest.param(
            CF_TLV, marks=pytest.mark.lwm2md_config({"server": {"content_format": "tlv"}}), id="tlv"
        ),
    ],
)
async def test_int_237_read_instance_without_accept(client, model, expected_cf):
    """No Accept on an instance → the configured multi-value format (SenML CBOR by default)."""
    resp = await client.read("/3/0")
    assert (resp.code, resp.content_format) == ("2.05", expected_cf)
    assert_device_values(resp.decode(), model)


SECURITY_OPERATIONS = {
    "read object": lambda c: c.read("/0"),
    "read instance": lambda c: c.read("/0/0", CF_TLV),
    "read resource": lambda c: c.read("/0/0/0", CF_TEXT),
    "discover": lambda c: c.discover("/0"),
    "write resource": lambda c: c.write("/0/0/0", b"coap://198.51.100.1", CF_TEXT),
    "partial update": lambda c: c.write_values("/0/0", {"/0/0/10": 7}, "tlv", method="POST"),
    "write-attributes": lambda c: c.write_attributes("/0", pmin=1),
    "execute": lambda c: c.execute("/0/0/0"),
    "create": lambda c: c.create(
        "/0", encode_tlv({"/0/5/0": "coap://198.51.100.1", "/0/5/1": False, "/0/5/2": 3}, "/0"), CF_TLV
    ),
    "delete": lambda c: c.delete("/0/0"),
}


@pytest.mark.parametrize("operation", list(SECURITY_OPERATIONS))
async def test_int_221_security_object_is_unauthorized(client, operation):
    """Every DM operation on the Security object /0 → 4.01."""
    resp = await SECURITY_OPERATIONS[operation](client)
    assert resp.code == "4.01", f"{operation} on /0 → {resp}"


async def test_int_221_observe_security_object_is_unauthorized(client):
    obs = await client.observe("/0/0/0")
    assert obs.initial.code == "4.01" and not obs.established


async def test_int_222_read_objects(client, model):
    """Read /1 and /3: every instance, object-level TLV wraps instances."""
    for accept in (None, CF_TLV, CF_SENML_JSON):
        server_obj = await read_ok(client, "/1", accept)
        for path, expected in EXPECTED_SERVER.items():
            assert server_obj[path] == expected, f"/1 (Accept {accept}): {path}"
        assert all(p.startswith("/1/") for p in server_obj)
        device_obj = await read_ok(client, "/3", accept)
        assert all(p.startswith("/3/0/") for p in device_obj)
        assert_device_values(device_obj, model)


async def test_int_223_read_object_instance(client):
    values = await read_ok(client, "/1/0", CF_SENML_CBOR)
    for path, expected in EXPECTED_SERVER.items():
        assert values[path] == expected, path


async def test_int_224_read_single_resources(client):
    """/1/0/0, /1/0/1, /1/0/6, /1/0/7, /3/0/16 as text, byte for byte."""
    expected = {"/1/0/0": "1", "/1/0/1": str(LIFETIME), "/1/0/6": "1", "/1/0/7": "U", "/3/0/16": "U"}
    for path, text in expected.items():
        assert await read_text(client, path) == text, path


async def test_int_225_read_resource_instance(client):
    """/3/0/11/0 in text, TLV (one resource-instance TLV) and SenML CBOR."""
    text = await read_ok(client, "/3/0/11/0", CF_TEXT)
    tlv = await read_ok(client, "/3/0/11/0", CF_TLV)
    senml = await read_ok(client, "/3/0/11/0", CF_SENML_CBOR)
    assert text == tlv == senml
    assert list(text) == ["/3/0/11/0"] and 0 <= text["/3/0/11/0"] <= 32


async def test_read_multi_instance_resource(client):
    """/3/0/11 in TLV is one Multiple Resource TLV; text/plain cannot carry it → 4.06."""
    values = await read_ok(client, "/3/0/11", CF_TLV)
    assert values and all(p.startswith("/3/0/11/") for p in values)
    assert (await client.read("/3/0/11", CF_TEXT)).code == "4.06"


# --- writes ----------------------------------------------------------------------------------


async def test_int_205_write_text_and_read_back(client):
    """Write /1/0/2, /1/0/3, /1/0/5 as text/plain; read each back."""
    for path, text in (("/1/0/2", "7"), ("/1/0/3", "25"), ("/1/0/5", "3600")):
        resp = await client.write(path, text.encode(), CF_TEXT)
        assert resp.code == "2.04", f"write {path}: {resp}"
        assert await read_text(client, path) == text


async def test_int_212_write_cbor_and_read_back(lwm2md, client):
    """Write /1/0/2, /1/0/3, /1/0/6 as CBOR (60) when the client offers it."""
    if CF_CBOR not in advertised_formats(lwm2md):
        pytest.skip("the client does not advertise application/cbor (60)")
    for path, value in (("/1/0/2", 8), ("/1/0/3", 30), ("/1/0/6", False)):
        assert (await client.write(path, encode_cbor(value), CF_CBOR)).code == "2.04", path
        assert await read_ok(client, path, CF_CBOR) == {path: value}


async def test_int_215_tlv_partial_update_then_replace(client, model):
    """POST /1/0 (TLV) changes only the given resources; PUT /1/0 restores the instance."""
    original = await read_ok(client, "/1/0", CF_TLV)
    resp = await client.write_values("/1/0", {"/1/0/2": 11, "/1/0/3": 22}, "tlv", method="POST")
    assert resp.code == "2.04"
    after = await read_ok(client, "/1/0", CF_TLV)
    assert after == {**original, "/1/0/2": 11, "/1/0/3": 22}

    writable = {p: v for p, v in original.items() if model.resource(p).writable}
    assert (await client.write_values("/1/0", writable, "tlv", method="PUT")).code == "2.04"
    restored = await read_ok(client, "/1/0", CF_TLV)
    assert {p: restored.get(p) for p in writable} == writable
    assert restored["/1/0/0"] == original["/1/0/0"]


async def test_int_233_senml_cbor_partial_update(server, client):
    """POST /1/0 in SenML CBOR (with a base name), including the lifetime → Update with lt."""
    mark = server.mark()
    payload = encode_senml_cbor({"/1/0/1": 150, "/1/0/2": 13, "/1/0/6": False}, base_name="/1/0/")
    assert (await client.write("/1/0", payload, CF_SENML_CBOR, method="POST")).code == "2.04"
    values = await read_ok(client, "/1/0", CF_SENML_CBOR)
    assert (values["/1/0/1"], values["/1/0/2"], values["/1/0/6"]) == (150, 13, False)
    update = await server.wait_update(3, since=mark)
    assert update.params == {"lt": "150"}


async def test_int_234_senml_json_writes(client):
    """Replace single resources with SenML JSON, read back as text."""
    assert (await client.write_values("/1/0/3", {"/1/0/3": 45}, "senml-json")).code == "2.04"
    assert (await client.write_values("/1/0/6", {"/1/0/6": False}, "senml-json")).code == "2.04"
    assert await read_text(client, "/1/0/3") == "45"
    assert await read_text(client, "/1/0/6") == "0"


@pytest.mark.parametrize("path,payload", [("/1/0/0", b"5"), ("/3/0/0", b"Evil Corp"), ("/3/0/16", b"UT")])
async def test_int_256_write_read_only_resource(client, path, payload):
    """Write to a read-only resource → 4.05, value unchanged."""
    before = await read_text(client, path)
    resp = await client.write(path, payload, CF_TEXT)
    assert resp.code == "4.05", f"write {path} → {resp}"
    assert await read_text(client, path) == before


async def test_write_executable_resource_is_405(client):
    assert (await client.write("/1/0/8", b"1", CF_TEXT)).code == "4.05"


@pytest.mark.parametrize("path", ["/3/0", "/3/0/0", "/1/0"])
@pytest.mark.parametrize("accept", [CF_LWM2M_JSON, CF_JSON])
async def test_read_unsupported_accept_is_406(client, path, accept):
    assert (await client.read(path, accept)).code == "4.06"


@pytest.mark.parametrize(
    "path,cf,payload",
    [
        ("/1/0/2", CF_LWM2M_JSON, b'[{"n":"","v":7}]'),
        ("/1/0/2", CF_JSON, b"7"),
        ("/1/0", CF_LWM2M_JSON, b'{"bn":"/1/0/","e":[{"n":"2","v":7}]}'),
    ],
)
async def test_write_unsupported_content_format_is_415(client, path, cf, payload):
    before = await read_text(client, "/1/0/2")
    assert (await client.write(path, payload, cf)).code == "4.15"
    assert await read_text(client, "/1/0/2") == before


@pytest.mark.parametrize("path", ["/31024", "/31024/0", "/3/1", "/3/0/99", "/3/0/11/99", "/1/7", "/1/0/99"])
async def test_read_unknown_path_is_404(client, path):
    assert (await client.read(path)).code == "4.04"


@pytest.mark.parametrize("path", ["/1/0/99", "/1/5/1", "/31024/0/0"])
async def test_write_unknown_path_is_404(client, path):
    assert (await client.write(path, b"1", CF_TEXT)).code == "4.04"


# --- execute, create, delete -------------------------------------------------------------------


@pytest.mark.parametrize("path,args", [("/3/0/0", "0='x'"), ("/1/0/1", None), ("/3/0/13", "1")])
async def test_execute_non_executable_is_405(client, path, args):
    assert (await client.execute(path, args)).code == "4.05"


async def test_execute_unknown_resource_is_404(client):
    assert (await client.execute("/3/0/99")).code == "4.04"


@pytest.mark.parametrize("args", ["0='unterminated", "10", "a", "0=x", "0='x',,1", "0='x'1"])
async def test_execute_malformed_arguments_is_400(server, client, args):
    """Registration Update Trigger with arguments that break the Execute ABNF → 4.00, no Update."""
    mark = server.mark()
    resp = await client.execute("/1/0/8", args, cf=CF_TEXT)
    assert resp.code == "4.00", f"Execute /1/0/8 with {args!r} → {resp}"
    await server.assert_no_event("update", 1.0, since=mark)


async def test_int_680_create_on_device_object_is_405(client):
    payload = encode_tlv({"/3/1/0": "Second Device"}, "/3")
    assert (await client.create("/3", payload, CF_TLV)).code == "4.05"
    assert (await client.read("/3/1")).code == "4.04"


async def test_int_685_delete_device_instance_is_405(client):
    assert (await client.delete("/3/0")).code == "4.05"
    assert await read_text(client, "/3/0/0") == DEVICE["manufacturer"]


async def test_int_241_reboot_runs_reboot_command(lwm2md, client):
    """Execute Reboot /3/0/4 → 2.04 first, then the configured reboot_command runs."""
    lwm2md.expect_deregistration = False  # a client may De-register before rebooting
    marker = lwm2md.marker("rebooted")
    assert not marker.exists()
    assert (await client.execute("/3/0/4")).code == "2.04"
    await wait_for_file(marker, 5.0, "reboot_command")


async def test_int_656_factory_reset_runs_command(lwm2md, client):
    """Execute Factory Reset /3/0/5 → 2.04, then the configured factory_reset_command runs."""
    lwm2md.expect_deregistration = False  # a client may De-register before a factory reset
    marker = lwm2md.marker("factory-reset")
    assert not marker.exists()
    assert (await client.execute("/3/0/5")).code == "2.04"
    await wait_for_file(marker, 5.0, "factory_reset_command")

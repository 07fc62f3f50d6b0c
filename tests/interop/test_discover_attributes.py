"""Discover and Write-Attributes (ETS 1.1-int-260, 261 and the attribute rules of Core §5.1)."""

from __future__ import annotations

import pytest

from helpers import assert_still_serving, instance_counts, read_ok, resource_paths
from lwm2m_codecs import CF_LINK_FORMAT, CF_TLV, decode_link_format


async def discover(client, path: str) -> dict[str, dict]:
    """Discover ``path``; assert 2.05 with CF 40; return ``{href: attrs}``."""
    resp = await client.discover(path)
    assert (resp.code, resp.content_format) == ("2.05", CF_LINK_FORMAT), f"Discover {path} → {resp}"
    return decode_link_format(resp.payload)


def numeric(attrs: dict, *names: str) -> dict[str, float]:
    """The named attributes as numbers (absent ones left out)."""
    return {n: float(attrs[n]) for n in names if n in attrs and attrs[n] is not None}


async def test_discover_device_object(client, model):
    """Discover /3: the object, its instance, every resource (executables too), dim on multi-instance."""
    links = await discover(client, "/3")
    values = await read_ok(client, "/3/0", CF_TLV)
    expected = {"/3", "/3/0"} | resource_paths(values) | {"/3/0/4"}
    missing = expected - set(links)
    assert not missing, f"Discover /3 lacks {sorted(missing)}; got {sorted(links)}"
    for href in links:
        ids = [int(x) for x in href.strip("/").split("/")]
        assert ids[0] == 3 and len(ids) <= 3, f"unexpected link <{href}>"
        if len(ids) == 3:
            res = model.resource(href)
            assert res is not None, f"<{href}> is not a /3 resource"
            if res.multiple:
                assert links[href].get("dim") is not None, f"<{href}> is multi-instance and needs dim="
            else:
                assert "dim" not in links[href], f"<{href}> is single-instance but has dim="
    for href, count in instance_counts(values).items():
        assert links[href]["dim"] == str(count), f"<{href}>;dim={links[href]['dim']} but Read has {count}"


async def test_discover_device_instance(client):
    links = await discover(client, "/3/0")
    values = await read_ok(client, "/3/0", CF_TLV)
    assert {"/3/0"} | resource_paths(values) <= set(links)
    assert all(href.startswith("/3/0") for href in links)


async def test_int_260_write_attributes_and_discover(client):
    """Attributes at object and resource level; Discover on a resource shows the inherited ones."""
    assert (await client.write_attributes("/3", pmin=10, pmax=60)).code == "2.04"
    assert (await client.write_attributes("/3/0/13", pmax=30)).code == "2.04"
    links = await discover(client, "/3")
    assert numeric(links["/3"], "pmin", "pmax") == {"pmin": 10, "pmax": 60}
    assert numeric(links["/3/0/13"], "pmin", "pmax") == {"pmax": 30}

    links = await discover(client, "/3/0/13")
    assert numeric(links["/3/0/13"], "pmin", "pmax") == {"pmin": 10, "pmax": 30}

    assert (await client.write_attributes("/3/0/13", pmax=None)).code == "2.04"  # ?pmax: unset
    links = await discover(client, "/3/0/13")
    assert numeric(links["/3/0/13"], "pmin", "pmax") == {"pmin": 10, "pmax": 60}


async def test_int_261_attributes_on_multi_instance_resource(client):
    """epmin/epmax on /3/0/11 (multi-instance): Discover shows them next to dim=."""
    values = await read_ok(client, "/3/0/11", CF_TLV)
    assert (await client.write_attributes("/3/0/11", epmin=1, epmax=30)).code == "2.04"
    links = await discover(client, "/3/0/11")
    attrs = links["/3/0/11"]
    assert attrs.get("dim") == str(len(values))
    assert numeric(attrs, "epmin", "epmax") == {"epmin": 1, "epmax": 30}


async def test_write_attributes_on_server_instance(client):
    assert (await client.write_attributes("/1/0", pmin=10, pmax=60)).code == "2.04"
    links = await discover(client, "/1/0")
    assert numeric(links["/1/0"], "pmin", "pmax") == {"pmin": 10, "pmax": 60}


@pytest.mark.parametrize(
    "attrs,why",
    [
        ({"lt": 50, "gt": 10}, "lt > gt"),
        ({"gt": 100, "lt": 90, "st": 10}, "lt + 2·st ≥ gt"),
        ({"pmin": "abc"}, "pmin not a number"),
        ({"pmin": -1}, "negative pmin"),
        ({"st": -5}, "negative step"),
    ],
)
async def test_write_attributes_invalid_is_400(client, attrs, why):
    """An inconsistent or malformed attribute set → 4.00, and nothing is stored."""
    resp = await client.write_attributes("/1/0/1", **attrs)
    assert resp.code == "4.00", f"{why}: {resp}"
    links = await discover(client, "/1/0/1")
    # pmin/pmax may show up inherited from elsewhere; gt/lt/st can only come from this write.
    stored = (set(attrs) - {"pmin", "pmax"}) & set(links["/1/0/1"])
    assert not stored, f"{why}: attributes stored anyway: {links['/1/0/1']}"
    await assert_still_serving(client)


async def test_write_attributes_unknown_path_is_404(client):
    assert (await client.write_attributes("/3/0/99", pmin=1)).code == "4.04"
    assert (await client.write_attributes("/31024", pmin=1)).code == "4.04"

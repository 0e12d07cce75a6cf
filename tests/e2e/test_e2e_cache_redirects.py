"""End to end, the cache following a registry's 307 to its "CDN" itself: curl through TPROXY, HTTP/1.1, h2c, and
HTTPS with HTTP/1.1 and h2 (the CDN's certificate verified)."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.conftest import DUAL
from tinspect.lab.netlab import SERVER4, SERVER_NAME, Nginx

pytestmark = pytest.mark.netns

LAYER = os.urandom(1 << 20)
DIGEST = hashlib.sha256(LAYER).hexdigest()
BLOB = f"/v2/library/app/blobs/sha256:{DIGEST}"
CDN = f"/cdn/registry/v2/blobs/sha256/{DIGEST[:2]}/{DIGEST}/data"

# The registry's blob URL answers 307 to the CDN's (the server's address instead of its name: another
# origin) with a signed query that changes on every request, as Docker Hub and GHCR do.
REDIRECT = "".join(
    rf'location ~ "^/v2/library/{name}/blobs/sha256:(([0-9a-f]{{2}})[0-9a-f]{{62}})$" {{ {auth}'
    f"return 307 $scheme://{SERVER4}/cdn/registry/v2/blobs/sha256/$2/$1/data?sig=$request_id; }} "
    for name, auth in (("app", ""), ("private", 'if ($http_authorization != "Bearer right") { return 401; } ')))
PRIVATE = BLOB.replace("/app/", "/private/")  # needs "Authorization: Bearer right"


@pytest.fixture
def registry(lab, tmp_path, pki):
    """nginx as registry (the 307) and CDN (the bytes, under /cdn/), over HTTP and HTTPS."""
    web = Nginx(lab, lab.server, tmp_path / "nginx", extra=REDIRECT, tls=(pki["chain"], pki["key"]))
    target = web.root / CDN.lstrip("/")
    target.parent.mkdir(parents=True)
    target.write_bytes(LAYER)
    return web.start()


def cdn_fetches(web):
    return sum(1 for _, line, _ in web.access_log() if line.split()[1].startswith(CDN))


def registry_fetches(web, path=BLOB, method="GET"):
    return sum(1 for _, line, status in web.access_log() if line.split()[:2] == [method, path])


@pytest.mark.parametrize("http", ["--http1.1", "--http2-prior-knowledge"])
def test_a_registry_blob_redirected_to_a_cdn_is_fetched_once_and_then_served_from_disk(lab, proxy, registry,
                                                                                        tmp_path, http):
    """curl gets the layer (not the 307) twice; the CDN's log shows it once, the second GET reaches nobody."""
    lab.tproxy(8080, dports=[80])
    p = proxy(["--listen", DUAL, "--taps", "cache", "--tap-option", f"cache.dir={tmp_path / 'cache'}"],
              wait=[(8080, "tcp")])
    got = []
    for _ in range(2):
        out = lab.exec(lab.client, "sh", "-c", f"curl -sS {http} -w '%{{http_code}}\\n' -o /tmp/layer.$$ "
                       f"http://{SERVER_NAME}{BLOB} && sha256sum </tmp/layer.$$; rm -f /tmp/layer.$$", timeout=30)
        got.append(out.stdout.split()[:2])
    assert got == [["200", DIGEST]] * 2, got
    assert (registry_fetches(registry), cdn_fetches(registry)) == (1, 1), registry.access_log()
    assert (tmp_path / "cache" / "objects" / f"sha256-{DIGEST}").read_bytes() == LAYER
    assert f"answered 307; following it to http://{SERVER4}/cdn/" in p.log()


@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_an_https_registry_redirect_is_followed_over_verified_tls(lab, tls_proxy, registry, pki, tmp_path, http):
    """Over HTTPS (h2 or HTTP/1.1 to the client) the CDN leg is TLS to the server's address, verified against the
    lab CA; the layer is kept once and the second GET reaches nobody."""
    p = tls_proxy("--tap-option", f"cache.dir={tmp_path / 'cache'}", taps=("cache",))
    got = []
    for _ in range(2):
        out = lab.exec(lab.client, "sh", "-c", f"curl -sS {http} --cacert {pki['ours']} -w '%{{http_code}}\\n' "
                       f"-o /tmp/layer.$$ https://{SERVER_NAME}{BLOB} && sha256sum </tmp/layer.$$; "
                       f"rm -f /tmp/layer.$$", timeout=30)
        got.append(out.stdout.split()[:2])
    assert got == [["200", DIGEST]] * 2, got
    assert (registry_fetches(registry), cdn_fetches(registry)) == (1, 1), registry.access_log()
    assert f"answered 307; following it to https://{SERVER4}/cdn/" in p.log()


@pytest.mark.parametrize("http", ["--http1.1", "--http2-prior-knowledge"])
def test_a_private_layer_is_served_from_disk_only_to_requests_the_registry_lets_read_it(lab, proxy, registry,
                                                                                        tmp_path, http):
    """Fetched with a token: a later request without one gets the registry's 401 (its HEAD refused), one with the
    token gets the layer from disk after a HEAD the registry answered with its 307."""
    lab.tproxy(8080, dports=[80])
    proxy(["--listen", DUAL, "--taps", "cache", "--tap-option", f"cache.dir={tmp_path / 'cache'}"],
          wait=[(8080, "tcp")])

    def get(*headers):
        args = " ".join(f"-H '{h}'" for h in headers)
        out = lab.exec(lab.client, "sh", "-c", f"curl -sS {http} {args} -w '%{{http_code}}\\n' -o /tmp/layer.$$ "
                       f"http://{SERVER_NAME}{PRIVATE} && sha256sum </tmp/layer.$$; rm -f /tmp/layer.$$", timeout=30)
        return out.stdout.split()[:2]

    assert get("Authorization: Bearer right") == ["200", DIGEST]
    assert get()[0] == "401"
    assert get("Authorization: Bearer right") == ["200", DIGEST]
    assert cdn_fetches(registry) == 1
    assert (registry_fetches(registry, PRIVATE, "HEAD"), registry_fetches(registry, PRIVATE)) == (2, 2)

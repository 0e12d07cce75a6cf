"""End to end, the cache tap as a build farm runs it, with the job's real clients: skopeo pulling a
multi-layer image from a real registry (docker-registry behind nginx on HTTPS, which redirects blob GETs
to a CDN host with a signed, changing query), apt-get from a signed Debian repository and pip from a simple
index, each twice through TPROXY and through the explicit proxy, the second time from the cache; a transfer
the server cuts and a corrupted layer are not kept."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import DUAL, REPO
from tests.e2e.test_e2e_faults import metrics
from tinspect.lab.netlab import GW_CLIENT4, LabError, Nginx, ServerPKI

pytestmark = pytest.mark.netns

CDN_NAME, CDN4 = "cdn.test", "198.51.100.3"  # a second address on the server's link
EXPLICIT = f"http://{GW_CLIENT4}:3128"
IMAGE = "lab/app"
KiB = 1 << 10
MODES = ("tproxy", "explicit")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- what the servers serve, built once for the file ---------------------------------------------------------


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """An OCI image layout with three gzip layers of incompressible files; its blobs' digests (config first)."""
    layout = tmp_path_factory.mktemp("image")
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes, media_type: str) -> dict:
        (blobs / sha256(data)).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{sha256(data)}", "size": len(data)}

    layers, diff_ids = [], []
    for number, size in enumerate((200 * KiB, 400 * KiB, 800 * KiB)):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            data = os.urandom(size)
            info = tarfile.TarInfo(f"layer{number}/data.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        diff_ids.append(f"sha256:{sha256(raw.getvalue())}")
        layers.append(put(gzip.compress(raw.getvalue(), mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"))
    config = put(json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode(),
                 "application/vnd.oci.image.config.v1+json")
    manifest = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": config, "layers": layers}).encode(),
                   "application/vnd.oci.image.manifest.v1+json")
    manifest["annotations"] = {"org.opencontainers.image.ref.name": "1"}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return {"layout": layout, "blobs": [d["digest"].split(":")[1] for d in (config, *layers)]}


def _deb(workdir: Path) -> Path:
    """hello-lab_1.0_all.deb, holding 300 KiB of random bytes, built with dpkg-deb."""
    tree = workdir / "hello-lab"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text("Package: hello-lab\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: Lab <lab@lab.test>\nDescription: a package for the lab\n")
    (tree / "usr" / "share" / "hello-lab").mkdir(parents=True)
    (tree / "usr" / "share" / "hello-lab" / "data.bin").write_bytes(os.urandom(300 * KiB))
    deb = workdir / "hello-lab_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)
    return deb


def _signed_repository(debian: Path, deb: Path, keyring: Path) -> None:
    """A Debian-style repository (suite ``lab``, component ``main``) of one package, its Release signed
    (InRelease and Release.gpg) by a throwaway gpg key, which goes to ``keyring`` (apt's ``signed-by``)."""
    pool = debian / "pool" / "main"
    pool.mkdir(parents=True)
    shutil.copy(deb, pool)
    binary = debian / "dists" / "lab" / "main" / "binary-amd64"
    binary.mkdir(parents=True)
    packages = subprocess.run(["apt-ftparchive", "packages", "pool"], cwd=debian, check=True, capture_output=True)
    (binary / "Packages").write_bytes(packages.stdout)
    (binary / "Packages.gz").write_bytes(gzip.compress(packages.stdout, mtime=0))
    release = subprocess.run(["apt-ftparchive", "-o", "APT::FTPArchive::Release::Suite=lab",
                              "-o", "APT::FTPArchive::Release::Codename=lab",
                              "-o", "APT::FTPArchive::Release::Components=main",
                              "-o", "APT::FTPArchive::Release::Architectures=amd64", "release", "dists/lab"],
                             cwd=debian, check=True, capture_output=True)
    dists = debian / "dists" / "lab"
    (dists / "Release").write_bytes(release.stdout)
    home = tempfile.mkdtemp(prefix="tig")  # short: gpg-agent's socket path must fit in sun_path
    gpg = ["gpg", "--homedir", home, "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", ""]
    try:
        subprocess.run([*gpg, "--quick-generate-key", "tinspect lab repository <repo@lab.test>", "ed25519", "sign",
                        "never"], check=True, capture_output=True)
        subprocess.run([*gpg, "--clearsign", "--output", str(dists / "InRelease"), str(dists / "Release")],
                       check=True, capture_output=True)
        subprocess.run([*gpg, "--armor", "--detach-sign", "--output", str(dists / "Release.gpg"),
                        str(dists / "Release")], check=True, capture_output=True)
        subprocess.run([*gpg, "--export", "--output", str(keyring)], check=True, capture_output=True)
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def _wheel(directory: Path) -> Path:
    """hello_lab-1.0-py3-none-any.whl (a module and 300 KiB of random data), written as a wheel is: a zip
    with METADATA, WHEEL and a RECORD of every file's hash."""
    files = {"hello_lab/__init__.py": b"GREETING = 'hello from the lab'\n",
             "hello_lab/data.bin": os.urandom(300 * KiB),
             "hello_lab-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: hello-lab\nVersion: 1.0\n",
             "hello_lab-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tinspect-tests\n"
                                              b"Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()}"
                     f",{len(data)}\n" for name, data in files.items())
    files["hello_lab-1.0.dist-info/RECORD"] = (record + "hello_lab-1.0.dist-info/RECORD,,\n").encode()
    wheel = directory / "hello_lab-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """A document root holding a signed apt repository (``/debian``) and a PEP 503 simple index
    (``/simple/``, wheels in ``/packages/``), and the repository's keyring."""
    work = tmp_path_factory.mktemp("packages")
    root = work / "www"
    keyring = work / "repo-key.gpg"
    deb = _deb(work)
    _signed_repository(root / "debian", deb, keyring)
    (root / "packages").mkdir(parents=True)
    wheel = _wheel(root / "packages")
    project = root / "simple" / "hello-lab"
    project.mkdir(parents=True)
    (root / "simple" / "index.html").write_text('<!DOCTYPE html><html><body><a href="hello-lab/">hello-lab</a>'
                                                "</body></html>\n")
    (project / "index.html").write_text(f'<!DOCTYPE html><html><body><a href="../../packages/{wheel.name}'
                                        f'#sha256={sha256(wheel.read_bytes())}">{wheel.name}</a></body></html>\n')
    return {"root": root, "keyring": keyring, "deb": deb.read_bytes(), "wheel": wheel.read_bytes(),
            "deb_path": f"/debian/pool/main/{deb.name}", "wheel_path": f"/packages/{wheel.name}"}


# -- the servers and the proxy, per test ---------------------------------------------------------------------


@pytest.fixture
def registry(request, lab, tmp_path, pki, image):
    """docker-registry on the server's loopback holding the image (pushed with skopeo), behind nginx on
    HTTPS for server.test, which answers blob GETs with a 307 to cdn.test (another address, its own
    server block and access log ``cdn.log``) and a query signed anew for every request; the CDN serves the
    registry's blob files and refuses unsigned requests. Parametrized (indirect) with ``"user:password"``,
    nginx asks for those credentials (basic auth) for everything under /v2/, as a private registry does."""
    credentials = getattr(request, "param", None)
    storage = tmp_path / "registry"
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n"
                      "http:\n  addr: 127.0.0.1:5000\n")
    with open(tmp_path / "registry.log", "wb") as log:
        process = lab.spawn(lab.server, "docker-registry", "serve", str(config), stdout=log, stderr=log)
    lab.wait_listening(lab.server, 5000, proc=process)
    lab.exec(lab.server, "skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false",
             f"oci:{image['layout']}:1", f"docker://127.0.0.1:5000/{IMAGE}:1", timeout=60)
    lab.exec(lab.server, "ip", "addr", "add", f"{CDN4}/24", "dev", "eth0")
    lab.add_host(CDN_NAME, CDN4)
    cdn = ServerPKI(tmp_path / "cdn-pki", authority=pki["authority"], name=CDN_NAME, addresses=[CDN4])
    work = tmp_path / "nginx"
    auth = ""
    if credentials:
        user, password = credentials.split(":", 1)
        (tmp_path / "htpasswd").write_text(f"{user}:{{PLAIN}}{password}\n")
        auth = f'auth_basic "lab registry"; auth_basic_user_file {tmp_path / "htpasswd"}; '
    # Blob GETs go to a redirecting server of nginx's own on loopback: proxy_pass runs after auth_basic,
    # where a `return` in the front would answer before it, letting anyone have the redirect.
    front = (auth + "location /v2/ { proxy_pass http://127.0.0.1:5000; proxy_set_header Host $http_host; "
             "proxy_set_header X-Forwarded-Proto https; }\n"
             'location ~ "^/v2/.+/blobs/sha256:[0-9a-f]{64}$" { proxy_pass http://$blobs; proxy_redirect off; '
             "proxy_set_header Host $http_host; }\n")
    servers = ("map $request_method $blobs { GET 127.0.0.1:5001; default 127.0.0.1:5000; }\n"
               "server { listen 127.0.0.1:5001; access_log off; "
               'location ~ "^/v2/.+/blobs/sha256:(?<xx>[0-9a-f]{2})(?<rest>[0-9a-f]{62})$" { '
               f"return 307 https://{CDN_NAME}/docker/registry/v2/blobs/sha256/$xx/$xx$rest/data"
               "?expires=$msec&sig=$request_id; } }\n"
               f"server {{ listen {CDN4}:443 ssl http2; server_name {CDN_NAME}; "
               f"ssl_certificate {cdn.chain}; ssl_certificate_key {cdn.key}; "
               f"access_log {work}/cdn.log conn; root {storage}; "
               'location / { if ($arg_sig = "") { return 403; } } }')
    web = Nginx(lab, lab.server, work, tls=(pki["chain"], pki["key"]), extra=front, more=servers)
    web.start()
    lab.wait_listening(lab.server, 443)
    web.storage = storage
    return web


@pytest.fixture
def mirror(lab, tmp_path, pki, packages):
    """nginx for server.test on HTTP and HTTPS serving the apt repository and the simple index."""
    web = Nginx(lab, lab.server, tmp_path / "nginx", tls=(pki["chain"], pki["key"]),
                extra="location /simple/ { types { text/html html; } }")
    shutil.copytree(packages["root"], web.root, dirs_exist_ok=True)
    web.start()
    lab.wait_listening(lab.server, 443)
    return web


class Farm:
    """The proxy with the cache tap, transparent (TPROXY for 80, 443 and 8081) or explicit (on the
    gateway's client-side address); what the clients need to go through it, and what the cache holds."""

    def __init__(self, process, mode: str, cache: Path) -> None:
        self.process, self.mode, self.cache = process, mode, cache

    @property
    def explicit(self) -> bool:
        return self.mode == "explicit"

    def stored_urls(self) -> list[str]:
        """The URL of every entry stored."""
        return sorted(json.loads(meta.read_text())["url"] for meta in (self.cache / "objects").glob("*.json"))

    def stored_keys(self) -> list[str]:
        """The key of every entry stored."""
        return sorted(meta.stem for meta in (self.cache / "objects").glob("*.json"))

    def log(self, pattern: str, worker: int = 0) -> str:
        """The log of the proxy (or of its extra ``worker``) once it matches ``pattern``, or after 10 s
        (log lines are written after the client is served; an extra worker starts after the proxy)."""
        path = self.process.logfile.with_name(self.process.logfile.name + (f".worker{worker}" if worker else ""))
        deadline = time.monotonic() + 10
        while not re.search(pattern, text := path.read_text() if path.exists() else "") and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        return text


@pytest.fixture
def farm(lab, proxy, pki, tmp_path):
    """``farm(mode, *options)``: start the proxy with the cache tap (and --metrics), trusting the lab servers'
    CA."""

    def start(mode: str, *extra: str) -> Farm:
        cache = tmp_path / "cache"
        if mode == "tproxy":
            lab.tproxy(8080, dports=[80, 443, 8081])
            listen = ["--listen", DUAL]
        else:
            listen = ["--listen", f"tcp:3128:interface={GW_CLIENT4}", "--allow-clients", "192.0.2.0/24"]
        port = 8080 if mode == "tproxy" else 3128
        process = proxy([*listen, "--taps", "logger,cache", "--tap-option", f"cache.dir={cache}",
                         "--state-dir", str(pki["state"]), "--upstream-ca", str(pki["server_ca"]),
                         "--metrics", "tcp:9108:interface=127.0.0.1", *extra], wait=[(port, "tcp"), (9108, "tcp")])
        return Farm(process, mode, cache)

    return start


def run(lab, *argv: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a client command in the client namespace with ``env`` added; with ``check``, it must succeed.

    requests (pip's HTTP library) lets ``REQUESTS_CA_BUNDLE`` and ``CURL_CA_BUNDLE`` override pip's own
    ``--cert``, so they are removed, whatever the machine running the tests sets.
    """
    argv = ["env", "-u", "REQUESTS_CA_BUNDLE", "-u", "CURL_CA_BUNDLE", *(f"{k}={v}" for k, v in (env or {}).items()),
            *argv]
    try:
        return lab.exec(lab.client, *argv, check=check, timeout=90)
    except LabError as e:
        raise AssertionError(str(e)) from None


def requests(web: Nginx, log: str = "access.log") -> list[str]:
    """``METHOD path`` (no query) per request in an nginx log."""
    return [" ".join((request.split()[0], request.split()[1].split("?")[0])) for _, request, _ in web.access_log(log)]


# -- skopeo ---------------------------------------------------------------------------------------------------


def skopeo_argv(pki, out: Path, creds: str | None = None) -> list[str]:
    """``skopeo copy`` of the image from the registry to a ``dir:`` layout at ``out``, trusting our CA (the
    proxy's), logging in with ``creds`` (``user:password``) if given."""
    certs = out.parent / "certs"
    certs.mkdir(exist_ok=True)
    shutil.copy(pki["ours"], certs / "ca.crt")
    return ["skopeo", "--insecure-policy", "copy", "--src-cert-dir", str(certs),
            *(["--src-creds", creds] if creds else ["--src-no-creds"]), f"docker://server.test/{IMAGE}:1",
            f"dir:{out}"]


def skopeo_copy(lab, farm: Farm, pki, out: Path, check: bool = True, env: dict[str, str] | None = None,
                creds: str | None = None) -> subprocess.CompletedProcess:
    """Run `skopeo_argv` in the client namespace through ``farm``, with ``env`` added."""
    return run(lab, *skopeo_argv(pki, out, creds),
               env={**({"HTTPS_PROXY": EXPLICIT} if farm.explicit else {}), **(env or {})}, check=check)


def cdn_path(digest: str) -> str:
    return f"GET /docker/registry/v2/blobs/sha256/{digest[:2]}/{digest}/data"


def blob_path(digest: str) -> str:
    return f"GET /v2/{IMAGE}/blobs/sha256:{digest}"


@pytest.mark.parametrize("mode", MODES)
def test_skopeo_copies_an_image_twice_the_second_time_every_layer_from_the_cache(lab, registry, farm, pki,
                                                                                  image, tmp_path, mode):
    """Two skopeo copies of a three-layer image from the registry, whose blobs are redirected to the CDN
    with a new signature each time: both are whole (skopeo checks every digest), the CDN serves each blob
    once, the registry is not asked for any blob the second time, and the cache counts a hit for each."""
    f = farm(mode)
    skopeo_copy(lab, f, pki, tmp_path / "one")
    after_first = requests(registry)
    redirected = [status for _, request, status in registry.access_log() if "/blobs/" in request]
    assert redirected == ["307"] * len(image["blobs"]), registry.access_log()
    skopeo_copy(lab, f, pki, tmp_path / "two")
    for out in ("one", "two"):
        for digest in image["blobs"]:
            assert sha256((tmp_path / out / digest).read_bytes()) == digest
    assert sorted(requests(registry, "cdn.log")) == sorted(cdn_path(d) for d in image["blobs"])
    later = requests(registry)[len(after_first):]
    assert not [r for r in later if "/blobs/" in r], later  # manifests (never cached) are asked again
    assert f"GET /v2/{IMAGE}/manifests/1" in later
    assert f.stored_keys() == sorted(f"sha256-{d}" for d in image["blobs"])
    assert metrics(lab)["tinspect_cache_hits_total"] == len(image["blobs"])


@pytest.mark.parametrize("mode", MODES)
def test_the_proxy_follows_the_registry_redirect_so_the_client_never_reaches_the_cdn(lab, registry, farm, pki,
                                                                                      image, tmp_path, mode):
    """The client cannot reach the CDN's address at all (and, with the explicit proxy, goes to it
    directly, NO_PROXY), yet skopeo gets every blob: the proxy followed each 307 itself and answered the
    registry URL with the CDN's 200, which it stored; a second copy is served from the cache."""
    f = farm(mode)
    lab.exec(lab.client, "iptables", "-A", "OUTPUT", "-d", CDN4, "-j", "REJECT")
    direct = {"NO_PROXY": CDN_NAME} if f.explicit else {}
    skopeo_copy(lab, f, pki, tmp_path / "one", env=direct)
    skopeo_copy(lab, f, pki, tmp_path / "two", env=direct)
    for digest in image["blobs"]:
        assert sha256((tmp_path / "two" / digest).read_bytes()) == digest
    assert sorted(requests(registry, "cdn.log")) == sorted(cdn_path(d) for d in image["blobs"])
    assert requests(registry).count(blob_path(image["blobs"][0])) == 1


def test_concurrent_copies_through_two_workers_fetch_each_blob_once(lab, registry, farm, pki, image, tmp_path):
    """Four skopeo copies at once through --workers 2 (the kernel spreads their connections over both
    workers): all whole, and the CDN serves each blob once, the workers sharing the cache directory and
    its locks."""
    f = farm("tproxy", "--workers", "2")
    f.log("listening on", worker=1)
    copies = [tmp_path / f"copy{n}" for n in range(4)]
    script = "".join(f"{shlex.join(skopeo_argv(pki, out))} & p{n}=$!\n" for n, out in enumerate(copies))
    script += "".join(f"wait $p{n} || rc=1\n" for n in range(len(copies))) + "exit ${rc:-0}\n"
    run(lab, "sh", "-c", script)
    for out in copies:
        for digest in image["blobs"]:
            assert sha256((out / digest).read_bytes()) == digest
    assert sorted(requests(registry, "cdn.log")) == sorted(cdn_path(d) for d in image["blobs"])
    assert f.stored_keys() == sorted(f"sha256-{d}" for d in image["blobs"])
    assert list((f.cache / "tmp").iterdir()) == []
    for worker in (0, 1):  # 4 clients' dozen connections, hashed over two sockets: both had some
        assert re.search(r"cache: (hit|miss|waiting)", f.log("cache: ", worker)), worker


@pytest.mark.parametrize("registry", ["builder:s3cret"], indirect=True)
def test_a_private_image_is_copied_twice_and_every_hit_is_confirmed_with_the_clients_credentials(
        lab, registry, farm, pki, image, tmp_path):
    """A registry that wants credentials: skopeo with them copies twice, the second time every blob from
    the cache after a HEAD with its own credentials that the registry allowed, and the CDN serves each blob
    once; curl asking for a cached layer with wrong credentials or none gets the registry's 401, not the
    layer."""
    f = farm("tproxy")
    skopeo_copy(lab, f, pki, tmp_path / "one", creds="builder:s3cret")
    after_first = len(registry.access_log())
    skopeo_copy(lab, f, pki, tmp_path / "two", creds="builder:s3cret")
    for digest in image["blobs"]:
        assert sha256((tmp_path / "two" / digest).read_bytes()) == digest
    later = [(request.split()[0], request.split()[1], status) for _, request, status in
             registry.access_log()[after_first:] if "/blobs/" in request]
    assert sorted(later) == sorted(("HEAD", f"/v2/{IMAGE}/blobs/sha256:{d}", "200") for d in image["blobs"])
    assert sorted(requests(registry, "cdn.log")) == sorted(cdn_path(d) for d in image["blobs"])
    assert metrics(lab)["tinspect_cache_hits_total"] == len(image["blobs"])
    layer = image["blobs"][1]
    for who in (["-u", "builder:wrong"], []):
        denied = run(lab, "curl", "-sS", "--cacert", str(pki["ours"]), *who, "-o", "/dev/null", "-w", "%{http_code}",
                     f"https://server.test/v2/{IMAGE}/blobs/sha256:{layer}")
        assert denied.stdout == "401", denied.stdout
    assert metrics(lab)["tinspect_cache_hits_total"] == len(image["blobs"])


def test_a_corrupted_layer_is_refused_by_skopeo_and_not_kept(lab, registry, farm, pki, image, tmp_path):
    """The CDN serves a layer with one byte flipped (same length): skopeo refuses the copy, the cache
    keeps no entry for that digest, logs the mismatch naming the flow and counts it; once the CDN serves it whole
    again, the next copy fetches that layer again and keeps it."""
    f = farm("tproxy")
    bad = image["blobs"][2]
    data = registry.storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / bad[:2] / bad / "data"
    whole = data.read_bytes()
    data.write_bytes(whole[:1000] + bytes([whole[1000] ^ 0xFF]) + whole[1001:])
    refused = skopeo_copy(lab, f, pki, tmp_path / "one", check=False)
    assert refused.returncode != 0 and "Digest did not match" in refused.stderr, refused.stderr
    assert f"sha256-{bad}" not in f.stored_keys()
    log = f.log(rf"{bad} not kept")
    assert re.search(rf"flow \d+: cache: \S+{bad}\S* not kept: sha256 [0-9a-f]{{64}} is not the digest the URL "
                     "names", log), log
    assert metrics(lab)["tinspect_cache_digest_mismatches_total"] == 1
    data.write_bytes(whole)
    skopeo_copy(lab, f, pki, tmp_path / "two")
    assert sha256((tmp_path / "two" / bad).read_bytes()) == bad
    assert requests(registry, "cdn.log").count(cdn_path(bad)) == 2
    assert f"sha256-{bad}" in f.stored_keys()
    assert list((f.cache / "tmp").iterdir()) == []


# -- apt -------------------------------------------------------------------------------------------------------


def apt_machine(root: Path, keyring: Path) -> dict[str, str]:
    """A fresh apt state under ``root`` (a build machine with nothing downloaded yet): the environment
    whose APT_CONFIG points every apt directory there, the host's own apt state untouched."""
    for sub in ("state/lists/partial", "cache/archives/partial", "etc/apt.conf.d", "etc/preferences.d",
                "etc/trusted.gpg.d", "log"):
        (root / sub).mkdir(parents=True)
    (root / "status").touch()
    (root / "etc" / "sources.list").write_text(f"deb [signed-by={keyring}] http://server.test/debian lab main\n")
    conf = root / "apt.conf"
    conf.write_text(f'Dir "/"; Dir::State "{root}/state/"; Dir::State::status "{root}/status";\n'
                    f'Dir::Cache "{root}/cache/"; Dir::Etc "{root}/etc/"; Dir::Log "{root}/log/";\n'
                    'APT::Architecture "amd64"; APT::Architectures { "amd64"; }; Acquire::Languages "none";\n'
                    'APT::Sandbox::User "root"; Debug::NoLocking "true"; Acquire::Retries "0";\n')
    return {"APT_CONFIG": str(conf)}


@pytest.mark.parametrize("mode", MODES)
def test_apt_get_downloads_a_package_twice_the_second_time_from_the_cache(lab, mirror, farm, packages,
                                                                           tmp_path, mode):
    """Two fresh build machines run apt-get update and apt-get install --download-only against the signed
    repository: apt's signature and hash checks pass both times, the server sends the .deb once, and the
    index files (InRelease, Packages) are asked for by both and never cached."""
    f = farm(mode)
    proxy_option = ["-o", f"Acquire::http::Proxy={EXPLICIT}/"] if f.explicit else []
    for machine in ("one", "two"):
        env = apt_machine(tmp_path / machine, packages["keyring"])
        update = run(lab, "apt-get", *proxy_option, "update", env=env)
        assert not re.search(r"(?m)^[WE]:", update.stdout + update.stderr), update.stdout + update.stderr
        install = run(lab, "apt-get", *proxy_option, "install", "-y", "--download-only", "hello-lab", env=env)
        assert not re.search(r"(?m)^[WE]:", install.stdout + install.stderr), install.stdout + install.stderr
        got = tmp_path / machine / "cache" / "archives" / "hello-lab_1.0_all.deb"
        assert got.read_bytes() == packages["deb"]
    asked = requests(mirror)
    assert asked.count(f"GET {packages['deb_path']}") == 1, asked
    assert asked.count("GET /debian/dists/lab/InRelease") == 2, asked
    assert asked.count("GET /debian/dists/lab/main/binary-amd64/Packages.gz") == 2, asked
    assert f.stored_urls() == [f"http://server.test{packages['deb_path']}"]
    assert metrics(lab)["tinspect_cache_hits_total"] == 1


# -- pip --------------------------------------------------------------------------------------------------------


def pip_download(lab, farm: Farm, pki, out: Path, *what: str, check: bool = True) -> subprocess.CompletedProcess:
    """``pip download`` (no pip cache, no configuration of the host's) into ``out``, trusting our CA."""
    argv = [sys.executable, "-m", "pip", "download", "--isolated", "--no-cache-dir", "--disable-pip-version-check",
            "--no-deps", "--retries", "0", "--cert", str(pki["ours"]), "-d", str(out),
            *(["--proxy", EXPLICIT] if farm.explicit else []), *what]
    return run(lab, *argv, check=check)


@pytest.mark.parametrize("mode", MODES)
def test_pip_downloads_a_wheel_twice_the_second_time_from_the_cache(lab, mirror, farm, pki, packages, tmp_path,
                                                                     mode):
    """Two pip downloads of a wheel from the simple index over HTTPS: pip's hash check passes both times,
    the server sends the wheel once, and the project page under simple/ is asked for twice, never cached."""
    f = farm(mode)
    for out in ("one", "two"):
        pip_download(lab, f, pki, tmp_path / out, "--index-url", "https://server.test/simple/", "hello-lab")
        assert (tmp_path / out / "hello_lab-1.0-py3-none-any.whl").read_bytes() == packages["wheel"]
    asked = requests(mirror)
    assert asked.count(f"GET {packages['wheel_path']}") == 1, asked
    assert asked.count("GET /simple/hello-lab/") == 2, asked
    assert f.stored_urls() == [f"https://server.test{packages['wheel_path']}"]
    assert metrics(lab)["tinspect_cache_hits_total"] == 1


def test_a_wheel_the_server_cuts_off_is_not_kept(lab, farm, pki, tmp_path):
    """A server that announces a 1 MB wheel and resets the connection after 100 kB: pip fails, and the
    cache keeps nothing, not even a temporary file, and says why; the next download goes to the server."""
    lab.spawn(lab.server, sys.executable, "-m", "tests.peers", "cut-server", "8081", cwd=REPO)
    lab.wait_listening(lab.server, 8081)
    f = farm("tproxy")
    url = "http://server.test:8081/packages/cut-1.0-py3-none-any.whl"
    for attempt in range(2):
        cut = pip_download(lab, f, pki, tmp_path / "out", url, check=False)
        assert cut.returncode != 0, cut.stdout
        log = f.log(rf"(?s)(not kept: the transfer was cut.*){{{attempt + 1}}}")
        assert len(re.findall(rf"flow \d+: cache: {re.escape(url)} not kept: the transfer was cut", log)) == \
            attempt + 1, log
        assert f.stored_keys() == [] and list((f.cache / "tmp").iterdir()) == []
    assert metrics(lab)["tinspect_cache_misses_total"] == 2

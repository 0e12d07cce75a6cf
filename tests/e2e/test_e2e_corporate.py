"""End to end, the corporate gateway: client certificates towards a server that
requires one (nginx ``ssl_verify_client on``), and ``--spoof-source`` (nginx's log
shows the client's own address), with curl through TPROXY and the explicit proxy."""

from __future__ import annotations

import datetime
import re
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import REPO
from tests.e2e.test_e2e_h2 import wait_log
from tinspect.lab.netlab import (
    CLIENT4,
    CLIENT6,
    GW_CLIENT4,
    GW_SERVER6,
    SERVER4,
    SERVER6,
    SERVER6_NAME,
    SERVER_NAME,
    Nginx,
)

pytestmark = pytest.mark.netns


def curl(lab, *args, family="-4"):
    """curl in the client namespace."""
    return lab.exec(lab.client, "curl", "-sS", family, *args, check=False, timeout=30)


def client_pki(tmp_path):
    """A client CA (what nginx trusts for client certificates) and a certificate it issued to alice."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Corp client CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": tmp_path / "client-ca.pem", "cert": tmp_path / "alice.pem", "key": tmp_path / "alice.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


@pytest.fixture
def mtls(lab, tmp_path, pki):
    """nginx on 443 that requires a client certificate from the client CA; the CA's files."""
    clients = client_pki(tmp_path)
    web = Nginx(lab, lab.server, tmp_path / "nginx", tls=(pki["chain"], pki["key"]),
                extra=f"ssl_verify_client on; ssl_client_certificate {clients['ca']}; "
                      "add_header X-Client-Subject $ssl_client_s_dn always;")
    (web.root / "index.html").write_text("hello alice\n")
    web.start()
    lab.wait_listening(lab.server, 443)
    return web, clients


def test_configured_client_certificate_is_presented_to_the_server(lab, mtls, tls_proxy, pki):
    """With --client-cert for the host, nginx accepts the connection: 200 and alice's subject."""
    web, clients = mtls
    tls_proxy("--client-cert", f"*.test={clients['cert']},{clients['key']}")
    out = curl(lab, "--cacert", str(pki["ours"]), "-i", f"https://{SERVER_NAME}/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("HTTP/1.1 200") or out.stdout.startswith("HTTP/2 200"), out.stdout
    assert "x-client-subject: cn=alice" in out.stdout.lower(), out.stdout
    assert out.stdout.endswith("hello alice\n")


def test_server_asking_without_a_configured_certificate_answers_its_400(lab, mtls, tls_proxy, pki):
    """Without a certificate for the host the connection goes on without one: nginx's 400 reaches curl."""
    web, clients = mtls
    p = tls_proxy("--client-cert", f"other.example={clients['cert']},{clients['key']}")
    out = curl(lab, "--cacert", str(pki["ours"]), "-w", "\n%{http_code}", f"https://{SERVER_NAME}/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("\n400"), out.stdout
    assert "No required SSL certificate was sent" in out.stdout, out.stdout
    assert "passing it through" not in p.log()


def test_passthrough_client_auth_learns_the_host_and_the_client_authenticates_itself(lab, mtls, tls_proxy, pki):
    """--passthrough-client-auth: the first connection learns the host (logged, nginx's 400); the next one
    passes through, and curl holding alice's certificate authenticates to nginx end to end."""
    web, clients = mtls
    p = tls_proxy("--passthrough-client-auth")
    first = curl(lab, "--cacert", str(pki["ours"]), "-w", "\n%{http_code}", f"https://{SERVER_NAME}/")
    assert first.returncode == 0, first.stderr
    assert first.stdout.endswith("\n400"), first.stdout
    wait_log(p, r"flow \d+: server\.test \(198\.51\.100\.2:443\) asked for a client certificate and none is "
             r"configured for it; passing it through from now on")
    second = curl(lab, "--cacert", str(pki["server_ca"]), "--cert", str(clients["cert"]), "--key", str(clients["key"]),
                  "-w", "\n%{http_code}", f"https://{SERVER_NAME}/")
    assert second.returncode == 0, second.stderr
    assert second.stdout == "hello alice\n\n200", second.stdout  # trusting only the server's CA: untouched TLS
    wait_log(p, r"flow \d+: passing TLS for server\.test through untouched")


def test_passthrough_client_auth_learns_a_host_that_aborts_the_handshake(lab, tmp_path, tls_proxy, pki):
    """A TLS 1.2 server that requires a certificate aborts the handshake without one (openssl s_server
    -Verify): --passthrough-client-auth learns it all the same, and the next connection passes through."""
    clients = client_pki(tmp_path)
    server = lab.spawn(lab.server, "openssl", "s_server", "-quiet", "-accept", "443", "-tls1_2", "-www",
                       "-cert", str(pki["chain"]), "-key", str(pki["key"]), "-Verify", "1",
                       "-CAfile", str(clients["ca"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.wait_listening(lab.server, 443, proc=server)
    p = tls_proxy("--passthrough-client-auth")
    first = curl(lab, "--cacert", str(pki["ours"]), "-w", "\n%{http_code}", f"https://{SERVER_NAME}/")
    assert first.stdout.endswith("\n502"), (first.stdout, first.stderr)  # the aborted handshake's page
    wait_log(p, r"flow \d+: server\.test \(198\.51\.100\.2:443\) asked for a client certificate and none is "
             r"configured for it; passing it through from now on")
    second = curl(lab, "--cacert", str(pki["server_ca"]), "--cert", str(clients["cert"]), "--key", str(clients["key"]),
                  "-w", "\n%{http_code}", f"https://{SERVER_NAME}/")
    assert second.returncode == 0, second.stderr
    assert second.stdout.endswith("\n200") and "s_server" in second.stdout, second.stdout


def test_passthrough_client_auth_does_not_learn_a_server_that_failed_verification(lab, tmp_path, tls_proxy, pki):
    """A TLS 1.3 server asks for a client certificate before it shows its own: one that fails verification
    is refused (502) every time, never learned and passed through to a client that trusts us."""
    clients = client_pki(tmp_path)
    server = lab.spawn(lab.server, "openssl", "s_server", "-quiet", "-accept", "443", "-tls1_3", "-www",
                       "-cert", str(clients["cert"]), "-key", str(clients["key"]), "-verify", "1",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.wait_listening(lab.server, 443, proc=server)
    p = tls_proxy("--passthrough-client-auth")
    for _ in range(2):
        out = curl(lab, "--cacert", str(pki["ours"]), "-w", "\n%{http_code}", f"https://{SERVER_NAME}/")
        assert out.returncode == 0 and out.stdout.endswith("\n502"), (out.stdout, out.stderr)
        assert "certificate verify failed" in out.stdout, out.stdout
    wait_log(p, r"flow 2: TLS to upstream 198\.51\.100\.2:443 failed: certificate verify failed")
    assert "asked for a client certificate" not in p.log()


@pytest.mark.parametrize("family,client", [("-4", CLIENT4), ("-6", CLIENT6)])
def test_spoof_source_shows_the_client_address_to_the_server(lab, https, tls_proxy, pki, family, client):
    """--spoof-source under TPROXY: nginx's access log shows the client namespace's address, not the gateway's."""
    lab.spoof_return()
    tls_proxy("--spoof-source")
    out = curl(lab, "--cacert", str(pki["ours"]), f"https://{SERVER_NAME}/", family=family)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello tls\n"
    plain = curl(lab, f"http://{SERVER_NAME}/index.html", family=family)
    assert plain.returncode == 0, plain.stderr
    assert https.client_addresses() == [client, client]


def test_without_spoof_source_the_server_sees_the_gateway(lab, https, tls_proxy, pki):
    """The control: without --spoof-source nginx sees the gateway's server-side address."""
    tls_proxy()
    out = curl(lab, "--cacert", str(pki["ours"]), f"https://{SERVER_NAME}/")
    assert out.returncode == 0, out.stderr
    assert https.client_addresses() == ["198.51.100.1"]


def test_spoof_source_through_the_explicit_proxy(lab, https, proxy, pki):
    """The explicit proxy's CONNECT tunnel and absolute-form request leave from the client's address too."""
    lab.spoof_return()
    proxy(["--listen", "tcp:3128:interface=192.0.2.1", "--allow-clients", "192.0.2.0/24", "--state-dir",
           str(pki["state"]), "--upstream-ca", str(pki["server_ca"]), "--spoof-source"], wait=[(3128, "tcp")])
    out = curl(lab, "-x", "http://192.0.2.1:3128", "--cacert", str(pki["ours"]), f"https://{SERVER_NAME}/")
    assert out.returncode == 0, out.stderr
    plain = curl(lab, "-x", "http://192.0.2.1:3128", f"http://{SERVER_NAME}/index.html")
    assert plain.returncode == 0, plain.stderr
    assert https.client_addresses() == [CLIENT4, CLIENT4]


def test_spoof_source_connects_normally_to_a_name_of_the_other_family(lab, tmp_path, proxy):
    """--spoof-source, an IPv4 client, a name with only an IPv6 address: connected to from the gateway."""
    lab.spoof_return()
    web = Nginx(lab, lab.server, tmp_path / "nginx")
    (web.root / "index.html").write_text("over v6\n")
    web.start()
    proxy(["--listen", "tcp:3128:interface=192.0.2.1", "--allow-clients", "192.0.2.0/24", "--spoof-source"],
          wait=[(3128, "tcp")])
    out = curl(lab, "-x", "http://192.0.2.1:3128", "-w", "\n%{http_code}", f"http://{SERVER6_NAME}/index.html")
    assert out.stdout == "over v6\n\n200", out.stdout
    assert web.client_addresses() == [GW_SERVER6]


@pytest.fixture
def https_proxy(lab, proxy, pki, tmp_path):
    """tinspect with an HTTPS proxy listener on 192.0.2.1:3129, its certificate for that address minted
    from our CA (which curl trusts with --proxy-cacert)."""
    from tinspect.layers.tls.ca import CertificateAuthority, LeafCertificates

    cert, key = LeafCertificates(CertificateAuthority.load_or_generate(pki["state"])).get_cryptography(GW_CLIENT4)
    cert_path, key_path = tmp_path / "gateway.pem", tmp_path / "gateway.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    def start(*extra):
        return proxy(["--listen", f"explicit@ssl:3129:interface={GW_CLIENT4}:privateKey={key_path}:certKey={cert_path}",
                      "--allow-clients", "192.0.2.0/24", "--state-dir", str(pki["state"]),
                      "--upstream-ca", str(pki["server_ca"]), "--taps", "logger", *extra], wait=[(3129, "tcp")])

    return start


def test_https_proxy_listener_carries_plain_http_and_connect(lab, https, https_proxy, pki):
    """curl --proxy https://: an http:// request is decoded by the taps, and so is an https:// one: the TLS
    of its CONNECT tunnel, inside the listener's TLS, is intercepted (curl trusts our CA for the server)."""
    p = https_proxy()
    via = ["--proxy", f"https://{GW_CLIENT4}:3129", "--proxy-cacert", str(pki["ours"])]
    plain = curl(lab, *via, f"http://{SERVER_NAME}/index.html")
    assert plain.returncode == 0, plain.stderr + p.log()
    assert plain.stdout == "hello tls\n"
    tunnel = curl(lab, *via, "--http1.1", "--cacert", str(pki["ours"]), f"https://{SERVER_NAME}/")
    assert tunnel.returncode == 0, tunnel.stderr + p.log()
    assert tunnel.stdout == "hello tls\n"
    h2 = curl(lab, *via, "--http2", "--cacert", str(pki["ours"]), "-w", "%{http_version}", f"https://{SERVER_NAME}/")
    assert h2.returncode == 0 and h2.stdout == "hello tls\n2", h2.stderr + p.log()
    wait_log(p, r"flow \d+ to_server request GET http://server\.test/index\.html")
    wait_log(p, r"flow \d+: TLS intercepted for server\.test \(TLSv1\.3, ALPN http/1\.1\)")
    wait_log(p, r"flow \d+: TLS intercepted for server\.test \(TLSv1\.3, ALPN h2\)")
    log = wait_log(p, r"(?s)(flow \d+ to_server request GET https://server\.test/ .*){2}")
    assert len(re.findall(r"flow \d+ to_server request GET https://server\.test/ ", log)) == 2, log
    assert "Traceback" not in log, log


def test_https_proxy_listener_refuses_a_client_offering_only_h2(lab, https, https_proxy, pki):
    """A client offering only h2 over ALPN gets a no_application_protocol alert and a log line naming it;
    one offering h2 and http/1.1 gets http/1.1."""
    p = https_proxy()
    only_h2 = lab.exec(lab.client, "openssl", "s_client", "-connect", f"{GW_CLIENT4}:3129", "-alpn", "h2",
                       "-CAfile", str(pki["ours"]), check=False, input="", timeout=20)
    assert only_h2.returncode != 0 and "no application protocol" in only_h2.stderr, only_h2.stderr + p.log()
    both = lab.exec(lab.client, "openssl", "s_client", "-connect", f"{GW_CLIENT4}:3129", "-alpn", "h2,http/1.1",
                    "-CAfile", str(pki["ours"]), check=False, input="", timeout=20)
    assert "ALPN protocol: http/1.1" in both.stdout, both.stdout + both.stderr
    log = wait_log(p, r"refusing TLS from 192\.0\.2\.2:\d+ on explicit@ssl:3129\S*: it offers h2 over ALPN")
    assert "Traceback" not in log and "Unhandled" not in log, log


def test_https_proxy_listener_requires_proxy_auth(lab, https, https_proxy, pki):
    """--proxy-auth over the HTTPS proxy listener: wrong credentials get 407, right ones the page."""
    https_proxy("--proxy-auth", "alice:s3cret")
    via = ["--proxy", f"https://{GW_CLIENT4}:3129", "--proxy-cacert", str(pki["ours"])]
    wrong = curl(lab, *via, "--proxy-user", "alice:nope", "-o", "/dev/null", "-w", "%{http_code}",
                 f"http://{SERVER_NAME}/index.html")
    assert wrong.stdout == "407", wrong.stdout + wrong.stderr
    right = curl(lab, *via, "--proxy-user", "alice:s3cret", f"http://{SERVER_NAME}/index.html")
    assert right.returncode == 0, right.stderr
    assert right.stdout == "hello tls\n"
    tunnel = curl(lab, *via, "--proxy-user", "alice:nope", "--cacert", str(pki["server_ca"]), f"https://{SERVER_NAME}/")
    assert tunnel.returncode != 0 and "407" in tunnel.stderr, tunnel.stderr


@pytest.mark.parametrize("family,client,server", [("-4", CLIENT4, SERVER4), ("-6", CLIENT6, SERVER6)])
def test_spoof_source_udp_sessions_leave_from_the_client(lab, proxy, family, client, server):
    """--spoof-source for transparent UDP: the server sees the client's address and its answer comes back."""
    who = lab.spawn(lab.server, sys.executable, "-m", "tests.peers", "udp-who", "5353", cwd=REPO)
    lab.wait_listening(lab.server, 5353, "udp", proc=who)
    lab.tproxy(8053, proto="udp", dports=[5353])
    lab.spoof_return("udp")
    proxy(["--udp", "tproxy:8053:interface=\\:\\:", "--spoof-source"], wait=[(8053, "udp")])
    out = lab.exec(lab.client, sys.executable, "-m", "tests.peers", "udp-ask", server, "5353", "who", cwd=REPO,
                   timeout=15).stdout
    assert out.split() == [client]


def test_spoof_source_udp_sessions_never_share_a_source_port(lab, proxy):
    """Two spoofed UDP sessions of one client to one server never get the same source port (one 4-tuple
    for two sessions hands one's answers to the other): with one ephemeral port, the second is dropped, logged."""
    who = lab.spawn(lab.server, sys.executable, "-m", "tests.peers", "udp-who", "5353", cwd=REPO)
    lab.wait_listening(lab.server, 5353, "udp", proc=who)
    lab.tproxy(8053, proto="udp", dports=[5353])
    lab.spoof_return("udp")
    lab.exec(lab.gateway, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40000")
    p = proxy(["--udp", "tproxy:8053:interface=\\:\\:", "--spoof-source"], wait=[(8053, "udp")])
    ask = (sys.executable, "-m", "tests.peers", "udp-ask", SERVER4, "5353", "who")
    assert lab.exec(lab.client, *ask, cwd=REPO, timeout=15).stdout.split() == [CLIENT4]
    second = lab.exec(lab.client, *ask, cwd=REPO, timeout=15, check=False)
    assert second.returncode != 0 and not second.stdout, second.stdout
    wait_log(p, r"flow 2: --spoof-source: cannot bind 192\.0\.2\.2:0: .* \(no ephemeral port of it is free\); dropping the session")

"""Alert email (lbsolo.alerts_smtp): LBSOLO_SMTP_URL checked, and the channel against a real SMTP
server on loopback (tests/smtp_receiver.py): delivered and parsed, refused logins and recipients,
a closed port, retries with backoff, the queue's bound — the password never in what it reports."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from lbsolo.alerts_smtp import MailChannel, parse_smtp_url
from lbsolo.errors import InvalidInput
from tests.smtp_receiver import smtp_receiver

PASSWORD = "s3cret-pass"


def test_the_url_is_read_and_what_is_wrong_is_said_without_the_password():
    t = parse_smtp_url("smtp://me%40corp.com:p%40ss@mail.corp.com?to=a@corp.com,b@corp.com")
    assert (t.host, t.port, t.tls, t.user, t.password) == ("mail.corp.com", 587, False, "me@corp.com", "p@ss")
    assert t.sender == "me@corp.com" and t.recipients == ("a@corp.com", "b@corp.com")
    assert "p@ss" not in repr(t)
    s = parse_smtp_url("smtps://mail.corp.com?from=x@corp.com&to=a@corp.com&starttls=require")
    assert (s.port, s.tls, s.user) == (465, True, "")
    for url, message in [
        ("http://u:pw@host?to=a@b.c", "must start with smtp:// or smtps://"),
        ("smtp://u:pw@?to=a@b.c", "names no host"),
        ("smtp://u:pw@host:99999?to=a@b.c", "not a valid URL"),
        ("smtp://u:pw@host?from=x@b.c", "needs ?to=ADDRESS"),
        ("smtp://u:pw@host?to=a@b.c", "needs ?from=ADDRESS"),
        ("smtp://u:pw@host?from=x@b.c&to=nobody", "'nobody' is not an email address"),
        ("smtp://u:pw@host?from=x@b.c&to=a@b.c&cc=c@d.e", "unknown parameter(s) cc"),
        ("smtp://u:pw@host?from=x@b.c&to=a@b.c&starttls=maybe", "starttls is auto"),
    ]:
        with pytest.raises(InvalidInput) as e:
            parse_smtp_url(url)
        assert message in e.value.message and "pw" not in e.value.message.replace("smtps", ""), url


def test_an_invalid_url_leaves_the_channel_off_with_the_reason():
    channel = MailChannel("smtp://nope")
    channel.offer("s", "b")
    status = channel.status()
    assert status["state"] == "invalid" and "needs ?to=ADDRESS" in status["problem"] and status["waiting"] == 0
    assert MailChannel("").status()["state"] == "off"


async def wait_for(check, timeout: float = 5.0):
    for _ in range(int(timeout / 0.02)):
        if found := check():
            return found
        await asyncio.sleep(0.02)
    raise AssertionError("not in time")


def test_a_message_reaches_the_server_with_its_subject_body_and_addresses(run):
    with smtp_receiver(password=PASSWORD) as box:

        async def scenario() -> None:
            channel = MailChannel(box.url(to="ops@example.com,dev@example.com"))
            task = asyncio.create_task(channel.run())
            channel.offer("[lbsolo] ALERT shop: deploy failed", "Rule: deploy_failed\nApp: shop\n")
            [got] = await wait_for(box.received)
            await wait_for(lambda: channel.sent)
            task.cancel()
            assert got.user == "alerts" and got.sender == "lbsolo@example.com"
            assert got.recipients == ["ops@example.com", "dev@example.com"]
            assert got.message["Subject"] == "[lbsolo] ALERT shop: deploy failed"
            assert got.message["Auto-Submitted"] == "auto-generated"
            assert "App: shop" in got.message.get_content()
            assert channel.status()["state"] == "ok" and channel.status()["sent"] == 1

        run(scenario)


@pytest.mark.parametrize(
    ("mode", "said"),
    [("auth", "authentication refused by 127.0.0.1:{port}: 535"), ("rcpt", "recipient refused by 127.0.0.1:{port}")],
)
def test_a_refusing_server_is_reported_and_retried_with_backoff_until_it_accepts(run, mode, said):
    with smtp_receiver(password=PASSWORD, mode=mode) as box:

        async def scenario() -> None:
            channel = MailChannel(box.url(), backoff_base=0.05, backoff_max=0.2)
            task = asyncio.create_task(channel.run())
            channel.offer("subject", "body")
            await wait_for(lambda: channel.failed_attempts >= 2)
            status = channel.status()
            assert status["state"] == "failing" and status["waiting"] == 1
            assert status["last_error"].startswith(said.format(port=box.port)), status["last_error"]
            assert PASSWORD not in repr(status)
            box.mode = "accept"
            await wait_for(box.received)
            await wait_for(lambda: channel.status()["state"] == "ok")
            task.cancel()
            assert channel.status()["sent"] == 1 and channel.status()["waiting"] == 0

        run(scenario)


def test_a_wrong_password_is_refused_by_the_server_and_never_shown(run):
    with smtp_receiver(password=PASSWORD) as box:

        async def scenario() -> None:
            channel = MailChannel(box.url(password="wrong-one"), backoff_base=10)
            task = asyncio.create_task(channel.run())
            channel.offer("subject", "body")
            await wait_for(lambda: channel.failed_attempts)
            task.cancel()
            assert "535" in channel.status()["last_error"] and "wrong-one" not in repr(channel.status())

        run(scenario)


def test_a_closed_port_is_said_and_a_message_is_dropped_after_its_tries(run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens once closed

    async def scenario() -> None:
        channel = MailChannel(
            f"smtp://127.0.0.1:{port}?from=a@b.c&to=d@e.f", backoff_base=0.01, backoff_max=0.01, attempts=2
        )
        task = asyncio.create_task(channel.run())
        channel.offer("one", "x")
        await wait_for(lambda: channel.dropped == 1)
        task.cancel()
        status = channel.status()
        assert status["last_error"] == f"connection refused by 127.0.0.1:{port}" and status["failed_attempts"] == 2

    run(scenario)


def test_the_queue_is_bounded_and_offer_never_waits():
    channel = MailChannel("smtp://127.0.0.1:25?from=a@b.c&to=d@e.f", max_waiting=2)
    for n in range(5):
        channel.offer(f"s{n}", "x")  # no loop running: queued only
    assert channel.status()["waiting"] == 2 and channel.dropped == 3


# ---- TLS: STARTTLS when offered, smtps, and no password in clear but to loopback


def self_signed(tmp_path, *addresses: str) -> tuple[ssl.SSLContext, str]:
    """A server context with a certificate for these IP addresses, and the path of that certificate."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test smtp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "smtp.pem", tmp_path / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, str(cert_path)


def outside_address() -> str | None:
    """This machine's address on its default route (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_starttls_is_used_when_offered_and_the_certificate_checked(tmp_path, run):
    context, ca = self_signed(tmp_path, "127.0.0.1")
    with smtp_receiver(password=PASSWORD, tls=context) as box:

        async def scenario() -> None:
            trusting = MailChannel(box.url(), ca_bundle=ca)
            task = asyncio.create_task(trusting.run())
            trusting.offer("over TLS", "body")
            [got] = await wait_for(box.received)
            assert got.tls and box.plain_passwords == 0  # upgraded before the login
            # Without the CA: the certificate is refused, nothing is sent (and no password).
            strict = MailChannel(box.url(), backoff_base=10)
            task2 = asyncio.create_task(strict.run())
            strict.offer("not sent", "body")
            await wait_for(lambda: strict.failed_attempts)
            task.cancel()
            task2.cancel()
            assert strict.status()["last_error"].startswith(f"TLS with 127.0.0.1:{box.port} failed")
            assert len(box.received()) == 1 and box.plain_passwords == 0

        run(scenario)


def test_no_password_without_tls_to_a_host_that_is_not_loopback(run):
    address = outside_address()
    if address is None:
        pytest.skip("no address besides loopback on this machine")
    with smtp_receiver(password=PASSWORD, host="0.0.0.0") as box:

        async def scenario() -> None:
            channel = MailChannel(box.url(host=address), backoff_base=10)
            task = asyncio.create_task(channel.run())
            channel.offer("subject", "body")
            await wait_for(lambda: channel.failed_attempts)
            task.cancel()
            assert channel.status()["last_error"] == (
                f"{address}:{box.port} offers no STARTTLS: the password is not sent without TLS "
                "(use smtps://, or a server with STARTTLS)"
            )
            assert box.logins == [] and box.received() == []

        run(scenario)


def test_smtps_is_tls_from_the_first_byte(tmp_path, run):
    context, ca = self_signed(tmp_path, "127.0.0.1")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    seen: list[bytes] = []

    def accept_one() -> None:
        conn, _ = server.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"220 tls ready\r\n")
            seen.append(tls.recv(100))  # smtplib's EHLO, readable only through TLS

    import threading

    thread = threading.Thread(target=accept_one, daemon=True)
    thread.start()

    async def scenario() -> None:
        channel = MailChannel(f"smtps://127.0.0.1:{port}?from=a@b.c&to=d@e.f", ca_bundle=ca, backoff_base=10)
        task = asyncio.create_task(channel.run())
        channel.offer("s", "b")
        await wait_for(lambda: channel.failed_attempts)  # the toy server hangs up after EHLO
        task.cancel()

    run(scenario)
    thread.join(5)
    server.close()
    assert seen and seen[0].startswith(b"ehlo ")

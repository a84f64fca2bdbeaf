"""ACME's settings and what `lbsolo doctor` says of them."""

from __future__ import annotations

from lbsolo import doctor
from lbsolo.config import ACME_DIRECTORIES, Settings
from lbsolo.doctor import Facts, Level


def _acme(**settings) -> list[doctor.Finding]:
    return [f for f in doctor.judge(Facts(engine_version="27"), Settings(**settings)) if f.what == "acme"]


def test_acme_is_off_without_an_email_and_doctor_says_why_loudly_only_on_a_public_proxy():
    assert not Settings().acme_on and Settings(acme_email="ops@example.com").acme_on
    (laptop,) = _acme()
    assert laptop.level is Level.OK and "LBSOLO_ACME_EMAIL is not set" in laptop.detail
    (vps,) = _acme(proxy_host="0.0.0.0", public_ipv4="203.0.113.5")
    assert vps.level is Level.WARN and "LBSOLO_ACME_EMAIL" in vps.fix


def test_the_directory_is_lets_encrypt_production_by_default_staging_by_name_or_any_url():
    assert Settings().acme_directory_url == ACME_DIRECTORIES["production"]
    assert Settings(acme_directory="staging").acme_directory_url == ACME_DIRECTORIES["staging"]
    assert Settings(acme_directory="https://127.0.0.1:14000/dir").acme_directory_url == "https://127.0.0.1:14000/dir"


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LBSOLO_ACME_EMAIL", "ops@example.com")
    monkeypatch.setenv("LBSOLO_ACME_RESOLVER", "127.0.0.1:8053")
    monkeypatch.setenv("LBSOLO_ACME_HTTP_PORT", "5002")
    s = Settings.load(home=tmp_path)
    assert (s.acme_on, s.acme_resolver, s.acme_http_port, s.acme_dir) == (
        True,
        "127.0.0.1:8053",
        5002,
        tmp_path / "acme",
    )


def test_doctor_says_what_keeps_issued_certificates_from_being_served_or_validated():
    findings = _acme(acme_email="ops@example.com", proxy_port=8080)
    assert findings[0].level is Level.OK and "letsencrypt" in findings[0].detail
    problems = {f.fix for f in findings if f.level is Level.WARN}
    assert problems == {"set LBSOLO_PROXY_HTTPS_PORT=443", "set LBSOLO_PROXY_PORT=80"}
    fine = _acme(acme_email="ops@example.com", proxy_port=80, proxy_https_port=443)
    assert [f.level for f in fine] == [Level.OK]


def test_doctor_says_when_tls_alpn_01_cannot_reach_the_https_listener():
    findings = _acme(acme_email="ops@example.com", proxy_port=80, proxy_https_port=8443)
    warned = [f for f in findings if f.level is Level.WARN]
    assert len(warned) == 1 and "TLS-ALPN-01 on port 443, the HTTPS listener is on 8443" in warned[0].detail
    fine = _acme(acme_email="ops@example.com", proxy_port=80, proxy_https_port=8443, acme_tls_port=8443)
    assert [f.level for f in fine] == [Level.OK]

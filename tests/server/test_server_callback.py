"""Callbacks to the connector and the outbound TLS policy, against a real local HTTPS receiver with a self-signed
certificate (named connector.test, reached as 127.0.0.1: only a pin, or an anchor without the name check, fits)."""
from __future__ import annotations

import json
import uuid

import pytest
import requests

from ce.tls import OutboundPolicy, TlsConfigError, outbound_session
from tests.support.certs import self_signed
from tests.support.server_harness import CallbackReceiver as Receiver, ServerProcess, wait_until


@pytest.fixture(scope="module")
def connector_cert(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("connector"), "connector")


@pytest.fixture
def receiver(connector_cert):
    r = Receiver(connector_cert)
    yield r
    r.close()


# ---------------------------------------------------------------- ce.tls policies

def post(policy: OutboundPolicy, url: str) -> int:
    return outbound_session(policy).post(url, json={"ping": 1}, timeout=10).status_code


def test_sha1_pin_accepts_exactly_the_pinned_certificate(receiver, connector_cert):
    fingerprint = connector_cert.sha1()
    colons = ":".join(fingerprint[i:i + 2] for i in range(0, 40, 2)).upper()
    assert post(OutboundPolicy(sha1_fingerprint=colons), receiver.url) == 204
    wrong = ("0" if fingerprint[0] != "0" else "1") + fingerprint[1:]
    with pytest.raises(requests.exceptions.SSLError):
        post(OutboundPolicy(sha1_fingerprint=wrong), receiver.url)


def test_extra_ca_with_and_without_the_hostname_check(receiver, connector_cert):
    with pytest.raises(requests.exceptions.SSLError):          # public CAs only: self-signed is refused
        post(OutboundPolicy(), receiver.url)
    with pytest.raises(requests.exceptions.SSLError):          # anchored, but the name is connector.test
        post(OutboundPolicy(ca=connector_cert.cert), receiver.url)
    assert post(OutboundPolicy(ca=connector_cert.cert, check_hostname=False), receiver.url) == 204


def test_hostname_check_off_still_verifies_the_chain(receiver, pki):
    with pytest.raises(requests.exceptions.SSLError):          # an unrelated anchor does not vouch for the peer
        post(OutboundPolicy(ca=pki.ca.cert_path, check_hostname=False), receiver.url)


def test_policy_refuses_ca_and_pin_together(connector_cert):
    with pytest.raises(TlsConfigError):
        OutboundPolicy(ca=connector_cert.cert, sha1_fingerprint=connector_cert.sha1())
    with pytest.raises(TlsConfigError):
        OutboundPolicy(sha1_fingerprint="not-hex")


# ---------------------------------------------------------------- the server's callbacks

def test_status_changes_reach_the_callback_with_retries(tmp_path, pki, connector_cert):
    receiver = Receiver(connector_cert, fail_first=2)
    srv = ServerProcess(tmp_path / "srv", pki, callback={"url": receiver.url,
                                                         "sha1_fingerprint": connector_cert.sha1()})
    try:
        srv.start()
        step_id = f"cb-{uuid.uuid4().hex[:8]}"
        response = srv.session().post(srv.url + "/v1/steps", json={
            "id": step_id, "type": "test-wait", "params": {"seconds": 0.5, "password": "cb-secret-pw"}}, timeout=10)
        assert response.status_code == 202
        wait_until(lambda: any(r["status"] == "succeeded" for r in receiver.received), 60,
                   "the succeeded callback")
        statuses = [r["status"] for r in receiver.received]
        assert statuses == ["pending", "running", "succeeded"]
        assert receiver.attempts == len(statuses) + 2            # the two 503s were retried
        final = receiver.received[-1]
        assert final["id"] == step_id and final["result"]["facts"] == {"slept": 0.5} and final["progressPercent"] == 100
        assert final["warnings"] == [{"code": "test_warning", "message": "a warning from the test step"}]
        assert "params" not in final and "cb-secret-pw" not in json.dumps(receiver.received)
        assert all(h["Authorization"] == f"Bearer {srv.token}" for h in receiver.headers)
    finally:
        srv.stop()
        receiver.close()


def test_a_wrong_pin_delivers_nothing_and_does_not_hold_up_the_step(tmp_path, pki, connector_cert, receiver):
    wrong = "ab" * 20
    srv = ServerProcess(tmp_path / "srv", pki, callback={"url": receiver.url, "sha1_fingerprint": wrong})
    try:
        srv.start()
        api, step_id = srv.session(), f"cb-{uuid.uuid4().hex[:8]}"
        api.post(srv.url + "/v1/steps", json={"id": step_id, "type": "test-wait", "params": {"seconds": 0.2}},
                 timeout=10)
        doc = wait_until(lambda: (d := api.get(f"{srv.url}/v1/steps/{step_id}", timeout=10).json())["status"]
                         == "succeeded" and d, 60, "the step to succeed")
        assert doc["result"]["facts"] == {"slept": 0.2}
        wait_until(lambda: "callback for status" in srv.log_text(), 60, "the undelivered callback to be logged")
        assert receiver.received == [] and receiver.attempts == 0
    finally:
        srv.stop()


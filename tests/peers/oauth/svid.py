"""The agent's side of client authentication: a fresh JWT-SVID for `aud` = the issuer, from
the Workload API (SPIFFE_ENDPOINT_SOCKET) through py-spiffe.

The Workload API hands out the same JWT-SVID for the same audiences until half its lifetime,
and the broker accepts each assertion once, so a second, unique audience makes each one new.
"""

import uuid

from spiffe import SpiffeId, WorkloadApiClient


def assertion(issuer: str, spiffe_id: str | None = None) -> str:
    client = WorkloadApiClient(default_timeout=10.0)
    try:
        audiences = {issuer, f"urn:svid-broker:nonce:{uuid.uuid4().hex}"}
        if spiffe_id:
            svid = client.fetch_jwt_svid(audiences, subject=SpiffeId(spiffe_id))
        else:
            svid = client.fetch_jwt_svid(audiences)
        return svid.token
    finally:
        client.close()

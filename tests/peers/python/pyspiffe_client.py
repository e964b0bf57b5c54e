"""A py-spiffe (PyPI `spiffe`) Workload API client, run by tests/workload_api_peers.rs.

Reads SPIFFE_ENDPOINT_SOCKET, fetches the X.509 context, a JWT-SVID for the audience given as
argv[1], validates it through the Workload API and offline with the fetched JWT bundle, and
prints what it saw as one JSON object. Exits non-zero, with the error on stderr, on any failure.
"""

import json
import sys

from spiffe import JwtSvid, WorkloadApiClient

TIMEOUT = 10.0


def main() -> int:
    audience = sys.argv[1]
    client = WorkloadApiClient(default_timeout=TIMEOUT)
    try:
        ctx = client.fetch_x509_context()
        svid = ctx.default_svid
        bundles = ctx.x509_bundle_set
        td = svid.spiffe_id.trust_domain
        bundle = bundles.get_bundle_for_trust_domain(td)

        jwt_svid = client.fetch_jwt_svid({audience})
        validated = client.validate_jwt_svid(jwt_svid.token, audience)

        jwt_bundles = client.fetch_jwt_bundles()
        jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(td)
        offline = JwtSvid.parse_and_validate(jwt_svid.token, jwt_bundle, {audience})

        try:
            JwtSvid.parse_and_validate(jwt_svid.token, jwt_bundle, {audience + "-other"})
            wrong_audience_rejected = False
        except Exception:  # noqa: BLE001 - any rejection will do
            wrong_audience_rejected = True

        print(json.dumps({
            "x509_spiffe_id": str(svid.spiffe_id),
            "x509_chain_len": len(svid.cert_chain),
            "x509_bundle_trust_domains": sorted(str(b.trust_domain) for b in bundles.bundles),
            "x509_bundle_authorities": len(bundle.x509_authorities) if bundle else 0,
            "jwt_spiffe_id": str(jwt_svid.spiffe_id),
            "jwt_audience": sorted(jwt_svid.audience),
            "validated_spiffe_id": str(validated.spiffe_id),
            "offline_spiffe_id": str(offline.spiffe_id),
            "jwt_bundle_keys": len(jwt_bundle.jwt_authorities) if jwt_bundle else 0,
            "wrong_audience_rejected": wrong_audience_rejected,
        }))
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

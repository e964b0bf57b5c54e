"""A py-spiffe (PyPI `spiffe`) client that drops a supplementary group between two calls on one
connection; run as root by tests/workload_api_groups.rs.

argv: AUDIENCE KEPT_GID DROPPED_GID. Joins both groups, fetches a JWT-SVID for the audience
twice, leaves DROPPED_GID with setgroups (no exec, same user: only the groups change), and
fetches once more on the same client. Prints one JSON object: the SPIFFE IDs of the first two
fetches and the outcome of the third ("issued", or the error's text).
"""

import json
import os
import sys

from spiffe import WorkloadApiClient

TIMEOUT = 10.0


def main() -> int:
    audience, kept, dropped = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # Python's setgroups goes through libc, which applies it to every thread of the process.
    os.setgroups([kept, dropped])
    client = WorkloadApiClient(default_timeout=TIMEOUT)
    try:
        before = [str(client.fetch_jwt_svid({audience}).spiffe_id) for _ in range(2)]
        os.setgroups([kept])
        try:
            client.fetch_jwt_svid({audience})
            after = "issued"
        except Exception as e:  # noqa: BLE001 - the test reads the text
            after = f"{type(e).__name__}: {e}"
        print(json.dumps({"before": before, "after": after, "groups_now": os.getgroups()}))
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Readiness check of ``python -m runtime.serve`` for container HEALTHCHECKs and Kubernetes exec probes.

    python deploy/healthcheck.py [URL]        # exit 0: ready; 1: not ready, refused or unreachable

URL defaults to ``$EMOTECH_HEALTH_URL``, else http://127.0.0.1:8080/readyz. ``/readyz`` answers
200 once the model is loaded and warmed up, and 503 while starting or draining. With an API
key set (``$EMOTECH_API_KEY``, which the server reads too), every endpoint but ``/healthz``
needs it, so the probe sends it as a bearer token; an HTTP probe cannot read a secret, hence
this script. Standard library only: it runs in the slim images as they are.
"""

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8080/readyz"
TIMEOUT_S = 3.0


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("EMOTECH_HEALTH_URL", DEFAULT_URL)
    key = os.environ.get("EMOTECH_API_KEY")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as e:  # 503 while warming up or draining, 401 with a wrong key
        print(f"{url}: HTTP {e.code}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as e:
        print(f"{url}: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

# Local stand-in for python:3.11-slim (scripts/stack-test.sh): Debian bookworm's Python 3.11 in
# a virtual environment on PATH, so that `python` and `pip` work as in the official image
# (bookworm's own Python refuses system-wide pip installs, PEP 668).
ARG DEBIAN_IMAGE=genrec-standin/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /usr/local/python
# PIP_CERT: pip trusts the system bundle, which holds the host's locally added CAs (an egress
# proxy's), as the host's pip does.
ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]

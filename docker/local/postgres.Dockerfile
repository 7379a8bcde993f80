# A stand-in for the official postgres image, made from Debian's packages (postgresql-15) for a
# machine without Docker Hub. It honours what docker/compose.yaml uses of the official image:
# POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, data in /var/lib/postgresql/data, pg_isready.
ARG BASE_IMAGE=cyclegan-local/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        postgresql-15 && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/
USER postgres
EXPOSE 5432
# Fast shutdown, as the official image: SIGTERM (Docker's default) is a smart shutdown that waits
# for every client to leave, so a restart ended in SIGKILL and crash recovery.
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]

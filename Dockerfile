# Build stage: the release binary.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin falcon-vmray-connector

# Runtime stage: the binary, CA certificates and a non-root user with a fixed numeric UID and
# GID (10001), so bind-mounted host folders, `docker run --user` and Kubernetes' runAsUser can
# all name it. The image runs with a read-only root filesystem (`docker run --read-only`):
# everything the connector writes is under /app/log, /app/downloads and /app/state.
FROM debian:bookworm-slim
ARG UID=10001
ARG GID=10001
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid "$GID" connector \
    && useradd --system --uid "$UID" --gid "$GID" --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin connector
WORKDIR /app
COPY --from=build /src/target/release/falcon-vmray-connector /usr/local/bin/falcon-vmray-connector
COPY config/connector.example.toml /app/config/connector.example.toml
# Only the three writable folders belong to the connector; /app and its config stay root's.
# A named volume starts as a copy of these folders, ownership included.
RUN mkdir -p /app/log /app/downloads /app/state \
    && chown "$UID:$GID" /app/log /app/downloads /app/state \
    && chmod 0700 /app/downloads /app/state
USER $UID:$GID
VOLUME ["/app/log", "/app/downloads", "/app/state"]
# SQLite's temporary files go beside the state store, not to /tmp or /var/tmp, which a read-only
# root filesystem does not let it write.
ENV SQLITE_TMPDIR=/app/state
# /metrics and /healthz inside the container; `health` asks /healthz, which answers 503 once no
# cycle has completed for twice time_span (at least 10 minutes).
ENV CONNECTOR__METRICS__LISTEN=0.0.0.0:9464
EXPOSE 9464
# /healthz is 503 until the first cycle completes, and a first cycle may wait up to
# analysis_job_timeout (600 s by default) for analyses, after collecting, downloading and
# submitting: the 30-minute start period covers it, so a slow first cycle is not marked
# unhealthy. Docker marks the container healthy at the first success, even inside that period;
# failures inside it do not count. After it, 3 failures 60 s apart make it unhealthy.
HEALTHCHECK --interval=60s --timeout=10s --start-period=1800s --retries=3 \
    CMD ["/usr/local/bin/falcon-vmray-connector", "health"]
ENTRYPOINT ["/usr/local/bin/falcon-vmray-connector"]
CMD ["run"]

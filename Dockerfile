# Build stage: the release binary.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin falcon-vmray-connector

# Runtime stage: the binary, CA certificates and a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /app --shell /usr/sbin/nologin connector
WORKDIR /app
COPY --from=build /src/target/release/falcon-vmray-connector /usr/local/bin/falcon-vmray-connector
COPY config/connector.example.toml /app/config/connector.example.toml
RUN mkdir -p /app/log /app/downloads /app/state \
    && chown -R connector:connector /app \
    && chmod 0700 /app/downloads
USER connector
VOLUME ["/app/log", "/app/downloads", "/app/state"]
# /metrics and /healthz inside the container; `health` asks /healthz, which answers 503 once no
# cycle has completed for twice time_span.
ENV CONNECTOR__METRICS__LISTEN=0.0.0.0:9464
EXPOSE 9464
HEALTHCHECK --interval=60s --timeout=10s --start-period=120s --retries=3 \
    CMD ["/usr/local/bin/falcon-vmray-connector", "health"]
ENTRYPOINT ["/usr/local/bin/falcon-vmray-connector"]
CMD ["run"]

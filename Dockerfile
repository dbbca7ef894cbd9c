# Tocsin container image.
#
#   docker build -t tocsin .
#   docker run -p 8080:8080 -v tocsin-data:/var/lib/tocsin tocsin
#
# Two stages: a Rust toolchain image compiles the release binary, a slim Debian image runs
# it. Both are Debian bookworm, so the binary finds the same glibc at run time. It needs no
# other shared libraries: SQLite is compiled in (rusqlite "bundled") and TLS is rustls.

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------------------
# Build stage
# ---------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build

# 1. Dependencies only. Copy the manifests and the lock file, give every workspace member a
#    stub source, and build: this layer (all of crates.io compiled) is reused until a
#    manifest or Cargo.lock changes, however often the sources change.
#
#    The workspace is `members = ["crates/*"]` plus the root package `tocsin`. Docker's COPY
#    cannot keep directories when it expands a glob, so each crate is listed: adding a crate
#    under crates/ means adding its line here. (Forgotten, it fails this step if another
#    crate depends on it: cargo cannot read its manifest.)
COPY Cargo.toml Cargo.lock ./
COPY crates/bus/Cargo.toml      crates/bus/Cargo.toml
COPY crates/delivery/Cargo.toml crates/delivery/Cargo.toml
COPY crates/ingest/Cargo.toml   crates/ingest/Cargo.toml
COPY crates/metrics/Cargo.toml  crates/metrics/Cargo.toml
COPY crates/model/Cargo.toml    crates/model/Cargo.toml
COPY crates/router/Cargo.toml   crates/router/Cargo.toml
COPY crates/storage/Cargo.toml  crates/storage/Cargo.toml
COPY crates/web/Cargo.toml      crates/web/Cargo.toml
RUN set -eux; \
    mkdir -p src; \
    echo 'fn main() {}' > src/main.rs; \
    for crate in crates/*/; do \
        mkdir -p "${crate}src"; \
        : > "${crate}src/lib.rs"; \
    done; \
    cargo build --release --locked --bin tocsin; \
    rm -rf src crates/*/src

# 2. The real sources. Only what the binary is built from: the root package's src/, the
#    workspace crates, and the OpenAPI document the binary serves (the rest of schemas/,
#    tests/ and scripts/ are not needed for a release build).
#    COPY keeps the files' modification times from the build context, which can be older
#    than the stub build above; cargo would then consider the stub-built workspace crates
#    fresh and link the empty stubs. Touching the sources makes cargo rebuild all of them.
COPY src src
COPY crates crates
COPY schemas/openapi.json schemas/openapi.json
RUN set -eux; \
    find src crates schemas -type f -exec touch {} +; \
    cargo build --release --locked --bin tocsin; \
    ./target/release/tocsin --version

# ---------------------------------------------------------------------------------------
# Runtime stage
# ---------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: root certificates for TLS connections (amqps:// brokers, HTTPS
# destinations of future channels).
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*

# An unprivileged system user owning the data directory. The directory is created and
# chowned before VOLUME is declared, so a fresh named volume is initialised from it with
# the right owner. (A bind mount instead must be writable by uid 10001 itself.)
RUN set -eux; \
    groupadd --system --gid 10001 tocsin; \
    useradd --system --uid 10001 --gid tocsin --home-dir /var/lib/tocsin \
        --no-create-home --shell /usr/sbin/nologin tocsin; \
    mkdir -p /var/lib/tocsin /etc/tocsin; \
    chown tocsin:tocsin /var/lib/tocsin; \
    chmod 0750 /var/lib/tocsin

COPY --from=builder /build/target/release/tocsin /usr/local/bin/tocsin

# Settings defaults for a container: listen on every interface (the built-in default is
# 127.0.0.1, unreachable from outside the container) and keep the data in the volume.
# Any other setting is a TOCSIN_* variable too (see examples/tocsin.toml), or a mounted
# settings file named by TOCSIN_SETTINGS. Variables override the file, so `listen` and
# `data_dir` in a settings file have no effect in this image: change these variables.
ENV TOCSIN_LISTEN=0.0.0.0:8080 \
    TOCSIN_DATA_DIR=/var/lib/tocsin

# The queue (embedded backend), the delivery records, and the generated first-start
# credentials (initial-credentials.toml) and token key live here: keep it on a volume.
VOLUME ["/var/lib/tocsin"]
WORKDIR /var/lib/tocsin
EXPOSE 8080

# Numeric uid:gid of `tocsin`, so that runtimes that check "runAsNonRoot" can verify it.
USER 10001:10001

# Health check without an HTTP client binary: slim has no curl or wget, and installing curl
# would add libcurl and its TLS/LDAP/SSH dependencies (~10 MB and their CVEs) only to make
# one local request. "Skip it and rely on a compose healthcheck" does not avoid that: a
# compose healthcheck also runs inside this container, with the same missing tools. bash,
# which slim has, can open TCP connections through /dev/tcp, and that is enough for a plain
# HTTP/1.1 GET of /readyz (200 when ready, 503 while the bus is not). The port comes from
# TOCSIN_LISTEN at run time (8080 if unset); 127.0.0.1 also reaches a listener bound to
# 0.0.0.0 or [::]. To move the port, change TOCSIN_LISTEN: `serve --listen` would move the
# listener but not this check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "listen=${TOCSIN_LISTEN:-:8080}; exec 3<>/dev/tcp/127.0.0.1/${listen##*:} && printf 'GET /readyz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

# Tocsin is PID 1 and handles SIGTERM itself (graceful shutdown: finishes the requests and
# messages in hand), and it starts no child processes, so no init process is needed.
ENTRYPOINT ["tocsin"]
CMD ["serve"]

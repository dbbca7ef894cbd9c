# syntax=docker/dockerfile:1
# Tocsin container image (BuildKit: the build stage uses cache mounts).
#
#   docker build -t tocsin .
#   docker run -p 8080:8080 -v tocsin-data:/var/lib/tocsin tocsin
#
# Two stages: a Rust toolchain image compiles the release binary, a slim Debian image runs
# it. Both are Debian bookworm, so the binary finds the same glibc at run time. It needs no
# other shared libraries: SQLite is compiled in (rusqlite "bundled") and TLS is rustls.

# ---------------------------------------------------------------------------------------
# Build stage
# ---------------------------------------------------------------------------------------
# Base images are pinned to exact versions, so that a rebuild of the same commit uses the same
# compiler and the same runtime libraries: the Rust point release the workspace is tested with,
# and a dated Debian snapshot (Debian retags bookworm-slim with every point release and
# security update; the dated tag never moves). Move both on purpose, in a commit of their own.
FROM rust:1.95.0-bookworm AS builder
WORKDIR /build

# The whole build context (what .dockerignore lets through: the workspace without target/,
# .git, tests and local state), so no list of crates here can fall behind the workspace.
COPY . .

# BuildKit cache mounts keep crates.io downloads and the compiled dependencies between builds:
# after a source change only the workspace crates recompile. The target directory is a cache,
# not part of the image, so the binary is copied out of it within the same step.
# (tests/it/image.rs runs these commands outside Docker; keep them plain shell.)
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    set -eux; \
    cargo build --release --locked --bin tocsin; \
    mkdir -p out; \
    cp target/release/tocsin out/tocsin; \
    out/tocsin --version

# ---------------------------------------------------------------------------------------
# Runtime stage
# ---------------------------------------------------------------------------------------
FROM debian:bookworm-20251229-slim

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

COPY --from=builder /build/out/tocsin /usr/local/bin/tocsin

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

# Health check: `tocsin healthcheck` GETs /readyz (200 when Tocsin can take events, 503 while
# the bus cannot) on the address in TOCSIN_LISTEN, over HTTPS when [tls] is set, and exits 0
# only on 200. No shell, curl or wget needed. It reads the same settings as `serve` (variables
# and TOCSIN_SETTINGS), so a listener moved with `serve --listen` instead of TOCSIN_LISTEN
# would not be found.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["tocsin", "healthcheck"]

# Tocsin is PID 1 and handles SIGTERM itself (graceful shutdown: finishes the requests and
# messages in hand), and it starts no child processes, so no init process is needed.
ENTRYPOINT ["tocsin"]
CMD ["serve"]

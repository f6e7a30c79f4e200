# syntax=docker/dockerfile:1
#
# rlsgate container image.
#
#   docker build -t rlsgate .
#   docker run -p 6432:6432 \
#     -e RLSGATE_UPSTREAM__URL=postgres://app_rls@db:5432/app \
#     -e RLSGATE_UPSTREAM_PASSWORD=... -e RLSGATE_JWT_SECRET=... \
#     rlsgate
#
# Configuration: /etc/rlsgate/rlsgate.toml (copied from config/rlsgate.example.toml; mount
# your own file over it). Every key can be overridden with an environment variable named
# RLSGATE_<SECTION>__<KEY> (double underscore between levels), e.g.
# RLSGATE_LISTEN__ADDR, RLSGATE_UPSTREAM__URL, RLSGATE_AUTH__JWT__ISSUER.
# Secrets never belong in the image or the TOML file: point `*_env` keys at environment
# variables (upstream.password_env, auth.jwt.secret_env) or `*_file` keys at mounted files
# (Docker/Kubernetes secrets, e.g. /run/secrets/...).
#
# `rlsgate demo` is not meant for this image: it needs the PostgreSQL server binaries,
# which the runtime stage does not install.

# ---- build ---------------------------------------------------------------------------
FROM rust:1-bookworm AS builder

# libclang is needed by bindgen when building pg_query (the PostgreSQL parser).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Everything the build reads (see .dockerignore). policies/ is required: demo.sql is
# compiled into the binary with include_str!.
COPY . .

# Cache mounts keep the registry and target dir between builds; the binary is copied out
# in the same step because the cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin rlsgate \
 && install -m 0755 target/release/rlsgate /usr/local/bin/rlsgate

# ---- runtime -------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: TLS to the upstream database and JWKS endpoints.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 rlsgate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin rlsgate

COPY --from=builder /usr/local/bin/rlsgate /usr/local/bin/rlsgate
# Readable by the service user; it holds no secrets (those come from env or files).
COPY --chmod=0644 config/rlsgate.example.toml /etc/rlsgate/rlsgate.toml

# Inside a container the proxy must listen on all interfaces, not the loopback default.
# Like any key, overridable at `docker run -e RLSGATE_LISTEN__ADDR=...`.
ENV RLSGATE_LISTEN__ADDR=0.0.0.0:6432

USER 10001:10001
EXPOSE 6432

ENTRYPOINT ["rlsgate"]
CMD ["serve", "--config", "/etc/rlsgate/rlsgate.toml"]

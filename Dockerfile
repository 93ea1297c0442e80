# The wa-status-sidecar container image: one static binary, the example config, nothing else.
#
#   docker build -t wa-status-sidecar:0.1.0 .        (or: podman build / buildah bud)
#   docker run --rm wa-status-sidecar:0.1.0 check --config /etc/wa-status-sidecar/sidecar.toml
#
# Stage 1 builds a static (musl) release binary with the Rust version Cargo.toml declares as its
# minimum (scripts/check-msrv keeps RUST_VERSION and rust-version equal). Stage 2 is `scratch`:
# no shell, no package manager, no libc to patch; TLS roots are compiled in (webpki-roots), so
# it needs no CA bundle. About 9 MiB. The user is 65532:65532 ("nonroot", as in distroless).
#
# scripts/build-image builds the final stage below with buildah in CI (README "Container image").

ARG RUST_VERSION=1.88
ARG ALPINE_VERSION=3.22

FROM docker.io/library/rust:${RUST_VERSION}-alpine${ALPINE_VERSION} AS build
# musl-dev: the C runtime that ring's assembly and C parts link against. Its version is the one of
# the Alpine branch pinned by the image tag (a pinned apk version would vanish with the next
# security update of that branch).
# hadolint ignore=DL3018
RUN apk add --no-cache musl-dev
WORKDIR /src
# Dependencies first, in their own layer: a source change does not download the crates again.
# (The stubs only let cargo read the manifest, which names a library, a binary and a bench.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs benches/fleet.rs \
    && cargo fetch --locked \
    && rm -r src
COPY src/ src/
# No debug info and stripped symbols: the image carries the binary only. The rest of the release
# profile (Cargo.toml) applies as for `cargo build --release`.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked --bin wa-status-sidecar \
    && install -D -m 0755 target/release/wa-status-sidecar /out/usr/local/bin/wa-status-sidecar
# The root filesystem of the final stage: the example config and the user (no shell, no home),
# plus an empty /out-state that becomes the state directory, owned by that user
# (config/sidecar.toml leaves state.dir at its default, /var/lib/wa-status-sidecar).
COPY config/sidecar.toml /out/etc/wa-status-sidecar/sidecar.toml
RUN printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' > /out/etc/passwd \
    && printf 'root:x:0:\nnonroot:x:65532:\n' > /out/etc/group \
    && install -d -m 0755 /out/var/lib \
    && install -d -m 0750 /out-state

FROM scratch AS runtime
COPY --from=build /out/ /
# COPY makes files root's unless told otherwise: the state directory is the user's.
COPY --from=build --chown=65532:65532 /out-state/ /var/lib/wa-status-sidecar/
USER 65532:65532
# The admin API (/livez, /readyz, /metrics, /tenants). The example config listens on loopback;
# set admin.listen = "0.0.0.0:9464" in your config to publish it.
EXPOSE 9464
VOLUME ["/var/lib/wa-status-sidecar"]
# No curl in the image: the binary asks its own admin API for /livez (exit 0 on 200).
# WA_SIDECAR_ADMIN overrides the address when admin.listen is not on port 9464.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/wa-status-sidecar", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/wa-status-sidecar"]
CMD ["run", "--config", "/etc/wa-status-sidecar/sidecar.toml"]

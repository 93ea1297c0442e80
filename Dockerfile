# The wa-status-sidecar container image: the release binary, the C libraries it links, the
# example config, nothing else.
#
#   docker build -t wa-status-sidecar:0.1.0 .        (podman build --format docker -t ... .)
#   docker run --rm wa-status-sidecar:0.1.0 check --config /etc/wa-status-sidecar/sidecar.toml
#
# Stage 1 builds with the Rust version Cargo.toml declares as its minimum (scripts/check-msrv
# keeps RUST_VERSION and rust-version equal), on Debian 12 like distroless/cc. Stage 2 is
# `scratch` plus what distroless/cc would bring for this binary: glibc, libm, libgcc_s and the
# loader (found with ldd), /etc/passwd with the "nonroot" user 65532. No shell, no package
# manager. TLS roots are compiled in (webpki-roots), so no CA bundle. About 12 MiB.
# Why glibc and not a static musl binary (9 MiB): with musl's allocator the 10,000-tenant fleet
# benchmark missed the p99 latency bar (18 and 44 ms against <= 10 ms; glibc: 1.4 ms), and the
# sidecar's measured memory figures are glibc's with one malloc arena (README "Benchmark").
#
# scripts/build-image builds the final stage with buildah in CI (README "Container image").

ARG RUST_VERSION=1.88

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# Dependencies first, in their own layer: a source change does not download the crates again.
# (The stubs only let cargo read the manifest, which names a library, a binary and a bench.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs benches/fleet.rs \
    && cargo fetch --locked \
    && rm -r src
COPY src/ src/
# The release profile of Cargo.toml, as `cargo build --release`; `install -s` strips the symbols.
RUN cargo build --release --locked --bin wa-status-sidecar \
    && install -D -s -m 0755 target/release/wa-status-sidecar /out/usr/local/bin/wa-status-sidecar
# The shared libraries the binary links and the dynamic loader, at their own paths.
RUN ldd /out/usr/local/bin/wa-status-sidecar \
    | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' \
    | xargs -I '{}' cp -L --parents '{}' /out/
# The root filesystem of the final stage: the example config, name lookup (/etc/hosts first),
# the user (no shell, no home), and an empty /out-state that becomes the state directory, owned
# by that user (config/sidecar.toml leaves state.dir at its default, /var/lib/wa-status-sidecar).
COPY config/sidecar.toml /out/etc/wa-status-sidecar/sidecar.toml
RUN printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' > /out/etc/passwd \
    && printf 'root:x:0:\nnonroot:x:65532:\n' > /out/etc/group \
    && printf 'hosts: files dns\n' > /out/etc/nsswitch.conf \
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

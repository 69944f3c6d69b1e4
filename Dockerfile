# syntax=docker/dockerfile:1
# The `charon` binary in a distroless image; the Helm chart (charts/charon) runs it as
# `charon operator`. The same image provides `/charon-launcher`, statically linked so that
# pipelines and job arrays can copy it into pods whose images have no shell and no libc.
# Build from the repository root:
#   docker build -t ghcr.io/charon-dev/charon:0.1.0 .

FROM rust:1-bookworm AS build
WORKDIR /src
# Only what the build reads (see .dockerignore); kube uses rustls, so no OpenSSL is needed.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin charon \
    && cargo rustc --release --locked --bin charon-launcher -- -C target-feature=+crt-static \
    && cp target/release/charon /charon \
    && cp target/release/charon-launcher /charon-launcher

# glibc and libgcc, no shell or package manager; the `nonroot` variant runs as 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /charon /charon
COPY --from=build /charon-launcher /charon-launcher
USER 65532:65532
# Metrics, /healthz and /readyz of `charon operator --metrics-address 0.0.0.0:8080`.
EXPOSE 8080
ENTRYPOINT ["/charon"]
CMD ["operator"]

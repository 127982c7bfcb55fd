# syntax=docker/dockerfile:1
# tollgate: one image for `tollgate controller` and `tollgate gateway` (the Helm chart runs both).
#
#   docker build -t registry.example.com/tollgate:0.1.0 .
#   docker run --rm registry.example.com/tollgate:0.1.0 --help
#
# Build stage: the release binary, with the registry and target dirs in BuildKit cache mounts.
# The runtime stage is distroless (glibc + libgcc, CA roots, no shell, no package manager) and
# runs as the image's non-root user 65532; the chart adds a read-only root file system.
ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-${DEBIAN} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tollgate \
 && install -D -m 0755 target/release/tollgate /out/tollgate

# cc-debian12 matches the bookworm builder's glibc; the binary links only libc, libm, libgcc_s
# (TLS is rustls, no OpenSSL).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tollgate /usr/local/bin/tollgate
USER 65532:65532
# gateway API, gateway /metrics, controller /healthz+/readyz+/metrics
EXPOSE 8080 9090 8081
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["--help"]
LABEL org.opencontainers.image.title="tollgate" \
      org.opencontainers.image.description="Kubernetes-native LLM routing: ModelRoute/ProviderBudget controller and OpenAI-compatible gateway" \
      org.opencontainers.image.licenses="Apache-2.0"

# syntax=docker/dockerfile:1
# The image of every process the Kubernetes manifests run: node, paxos, prober and chaos, in
# /usr/local/bin. Build: docker build -t paxos-bank:0.1.0 .   (docs/kubernetes.md)
#
# Stage 1 builds with BuildKit cache mounts for the crate registry and target/: a rebuild after a
# source change recompiles our crates only (the dependency layer stays cached).
FROM rust:1.95.0-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p node -p paxos -p prober -p chaos \
 && mkdir -p /out \
 && cp target/release/node target/release/paxos target/release/prober target/release/chaos /out/

# Stage 2: no shell, no package manager; glibc and libgcc only (what Rust binaries link).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
# 65532 is distroless's `nonroot`; the manifests run as this user with a read-only root.
USER 65532:65532
EXPOSE 8080 9080 9180 9100 9300
ENTRYPOINT ["/usr/local/bin/node"]

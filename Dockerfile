# syntax=docker/dockerfile:1
# Every binary of the workspace in one small non-root image: `make image`.
# The Kubernetes manifests run `/usr/local/bin/<function>` (and `walletctl setup` in a Job).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Dependencies and incremental artifacts stay in BuildKit caches between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && mkdir /out \
 && cp target/release/walletctl /out/ \
 && for f in functions/*/; do cp "target/release/$(basename "$f")" /out/; done

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
EXPOSE 8080

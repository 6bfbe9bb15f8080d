# keyward as a container image: one static-ish binary on a slim Debian.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p keyward

FROM debian:bookworm-slim
RUN useradd --system --create-home --home-dir /var/lib/keyward keyward
COPY --from=build /src/target/release/keyward /usr/local/bin/keyward
USER keyward
WORKDIR /var/lib/keyward
ENTRYPOINT ["keyward"]

# Eddy's server, for docker-compose.yml.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /eddy
COPY . .
RUN cargo build --release --bin eddy

FROM debian:bookworm-slim
COPY --from=build /eddy/target/release/eddy /usr/local/bin/eddy
EXPOSE 4466
ENTRYPOINT ["eddy", "--listen", "0.0.0.0:4466", "--data-dir", "/data"]

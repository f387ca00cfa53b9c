# The `tally` binary in a small image, for docker-compose.yml (and anyone who wants a
# container). The Lambda functions are not built here: scripts/package-lambdas.sh does that.
#
#   docker build -t tally:local .
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tally && cp target/release/tally /usr/local/bin/tally

FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/tally --create-home tally
COPY --from=build /usr/local/bin/tally /usr/local/bin/tally
USER tally
WORKDIR /var/lib/tally
ENV TALLY_DATA=/var/lib/tally TALLY_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["tally"]
CMD ["serve"]

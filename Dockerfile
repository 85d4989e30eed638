# syntax=docker/dockerfile:1
# sagaflow, built from source in one stage and run from a slim image in the next.

FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sagaflow

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /data --create-home sagaflow
COPY --from=build /src/target/release/sagaflow /usr/local/bin/sagaflow
COPY workflows /app/workflows
USER sagaflow
WORKDIR /data
ENV SAGAFLOW_LISTEN=0.0.0.0:8080 \
    SAGAFLOW_DATA_DIR=/data \
    SAGAFLOW_WORKFLOWS=/app/workflows
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --retries=12 CMD curl -fsS http://127.0.0.1:8080/ready || exit 1
ENTRYPOINT ["sagaflow"]
CMD ["serve"]

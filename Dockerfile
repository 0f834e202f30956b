# syntax=docker/dockerfile:1
# ringcast in a container: a Rust build stage, then Debian 12 slim with the binary alone.
#
#   docker build -t ringcast --build-arg RINGCAST_COMMIT=$(git rev-parse --short=12 HEAD) .
#   docker run --rm -p 8080:8080 ringcast                  # epoll under Docker's default seccomp
#   docker run --rm -p 8080:8080 --security-opt seccomp=deploy/seccomp-io_uring.json ringcast
#
# README.md, "Deployment notes" / "Docker", says why io_uring needs the second form.

# The toolchain the project is built and tested with (Cargo.toml's rust-version, 1.88, is the
# oldest that builds it). Same Debian release as the runtime stage: same glibc.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# build.rs records the commit for `--version` and `ringcast_build_info`; .git is not in the
# build context (.dockerignore), so it comes from here ("unknown" when not given).
ARG RINGCAST_COMMIT=
# The registry and target caches survive between builds (BuildKit); the binary is copied out
# of the cached target directory, which is not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/ringcast /out/ringcast

FROM debian:bookworm-slim
# A fixed numeric uid/gid, so that runAsNonRoot policies can check it without /etc/passwd.
RUN groupadd --system --gid 10001 ringcast \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin ringcast
COPY --from=build /out/ringcast /usr/local/bin/ringcast
USER 10001:10001
EXPOSE 8080
# No curl or wget in the image: bash (part of every Debian image) speaks the one HTTP request
# through /dev/tcp, which adds nothing to the image, where curl would add about 10 MB of
# libraries. It checks the default port: with another --listen, override it
# (docker run --health-cmd ...) or turn it off (--no-healthcheck).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /health HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && read -r -t 2 line <&3 && [[ $line == 'HTTP/1.1 200 '* ]]"]
ENTRYPOINT ["ringcast"]
# Arguments given to `docker run IMAGE ...` replace these: repeat --listen 0.0.0.0:8080 then
# (the server's own default is loopback only, unreachable from outside the container).
CMD ["--listen", "0.0.0.0:8080"]

# The gateway image: a slim Python with the package installed, run as a non-root user.
# EXTRAS are the optional dependencies installed with it: `postgres` (psycopg 3 and its
# pool, for a PostgreSQL catalog) by default; add `pkcs11` for an HSM
# (--build-arg EXTRAS=postgres,pkcs11; the token's PKCS#11 library must be added too).
FROM python:3.11-slim AS build
ARG EXTRAS=postgres
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir --prefix=/install ".[${EXTRAS}]"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/gateway --create-home gateway \
 && install -d -o gateway -g gateway -m 0700 /var/lib/gateway/data /var/lib/gateway/keys
# Both folders exist in the image, owned by the gateway's user, so that an empty named
# volume mounted on one starts with that owner and mode (Docker copies them).
COPY --from=build /install /usr/local
USER gateway
WORKDIR /var/lib/gateway
ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_DATA_DIR=/var/lib/gateway/data
EXPOSE 8080
# Liveness only (/healthz): readiness (/readyz) is the load balancer's business.
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
ENTRYPOINT ["gateway"]
CMD ["serve"]

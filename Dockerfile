# broker: docker build -t broker . && docker run -v ./broker.toml:/etc/broker/broker.toml -p 8200:8200 broker
# Build stage: a wheel of the broker and its dependencies; nothing of it reaches the image
# but the wheels.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY broker ./broker
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin broker
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels && python -c "import broker"
ENV BROKER_LISTEN_ADDRESS=0.0.0.0:8200 \
    PYTHONUNBUFFERED=1

USER broker
EXPOSE 8200
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8200/v1/sys/health', timeout=2)"
ENTRYPOINT ["broker"]
CMD ["server", "--config", "/etc/broker/broker.toml", "--log-format", "json"]

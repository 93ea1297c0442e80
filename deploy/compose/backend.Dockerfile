# compose.yaml's `backend`: the Flask kit's demo backend (contrib/flask/app.py --demo), on SQLite.
# Build context: the repository root.
FROM docker.io/library/python:3.11-slim-bookworm
WORKDIR /app
# The kit installed as a package, as an app would install it (its copy of the bell's texts
# included).
COPY contrib/flask/ contrib/flask/
RUN pip install --no-cache-dir --disable-pip-version-check ./contrib/flask \
    && useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin backend \
    && install -d -o 10001 -g 10001 /data
USER 10001:10001
# --demo binds loopback only: in compose the sidecar and the bell page reach it through the
# network namespace they share with the gateway (compose.yaml).
CMD ["python", "contrib/flask/app.py", "--demo", "--db", "/data/demo.db", "--port", "8000"]

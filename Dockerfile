# One image for every genmesh process; compose chooses the process with `command:`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Dependencies first, in their own layer, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY gen ./gen
COPY services ./services
COPY genmesh_cli ./genmesh_cli
COPY gateway-http ./gateway-http
# A regular (non-editable) install; the sources are removed so imports come from site-packages.
RUN pip install --no-deps . && rm -rf /src

# Unprivileged; /data is where volumes mount (blobs, embedded-mode files) and the working
# directory, so a relative data dir is writable too.
RUN useradd --system --uid 10001 --no-create-home genmesh \
    && mkdir /data \
    && chown genmesh:genmesh /data
USER genmesh
WORKDIR /data

CMD ["python", "-m", "services.router"]

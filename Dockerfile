# The image of every ctower process in docker-compose.yml (worker, sink,
# dashboard, simulator): the project pip-installed (not editable) into
# python:3.11-slim, run as an unprivileged user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first, read from pyproject.toml alone: this slow layer (faust,
# chdb, pyarrow, streamlit) is rebuilt only when the dependencies change, not
# on every edit of our code.
COPY pyproject.toml /src/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the project itself, not editable (see .dockerignore for what stays
# out); the sources are not needed once installed.
COPY . /src/
RUN pip install --no-deps /src \
    && rm -rf /src

# Never run as root: a compromised dashboard must not own the container.
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin ctower
USER ctower
WORKDIR /home/ctower
# Local state (Faust's RocksDB tables) lives here, per container.
ENV CTOWER_DATA_DIR=/home/ctower/data

CMD ["ctower", "--help"]

# The image of every ctower process in docker-compose.yml (workers, sink,
# dashboard, alert service, simulator): the project pip-installed (not
# editable) into Python's slim image, run as an unprivileged user. The base
# is pinned to the interpreter the pins in constraints.txt were tested on.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first, read from pyproject.toml alone and pinned by
# constraints.txt (the versions the test suite passes with): this slow layer
# (faust, chdb, pyarrow, streamlit) is rebuilt only when the dependencies
# change, not on every edit of our code.
COPY pyproject.toml constraints.txt /src/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -c /src/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the project itself, not editable (see .dockerignore for what stays
# out: secrets, tests, local data); the sources are not needed once installed.
COPY . /src/
RUN pip install --no-deps /src \
    && rm -rf /src

# Never run as root: a compromised dashboard must not own the container.
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin ctower
USER ctower
WORKDIR /home/ctower
# Local state lives here, per container: Faust's data folder, the alert
# service's outbox, the heartbeats `ctower health` reads.
ENV CTOWER_DATA_DIR=/home/ctower/data

CMD ["ctower", "--help"]

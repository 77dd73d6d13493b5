# syntax=docker/dockerfile:1
# The image every service of docker-compose.yml runs. The first stage builds the project's wheel (and one
# for each dependency); the second installs them into a slim Python and holds no source checkout, no
# wheel and no compiler, and runs as an unprivileged user.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# What the wheel is built from; .dockerignore keeps the rest of the checkout out of the build context.
COPY pyproject.toml README.md ./
COPY integrations ./integrations
COPY config ./config
COPY tasks ./tasks
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1
# The wheels are mounted for this one step, not copied: none of them stays in a layer. --no-index: the
# dependencies come from the wheels built above, not from a second resolution against the index.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/integrations-*.whl
# The home folder is the working directory (beat's schedule file lands there, and Celery puts it first on
# sys.path: it holds no other `config` or `tasks`). metrics/ is where the worker processes keep their
# Prometheus counts: created here so that a named volume mounted on it takes the user as its owner.
RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/integrations --create-home integrations \
    && install -d -o integrations -g integrations /var/lib/integrations/metrics
# By number, so a runtime that checks for a non-root user (runAsNonRoot) can tell without /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/integrations
CMD ["integrations", "--help"]

# Edge Impulse custom processing (DSP) block: YAMNet log-mel patches, served by cryblock.
#   docker build -t cryblock-dsp .
#   docker run --rm -p 4446:4446 cryblock-dsp        # then: curl localhost:4446/parameters
# The server speaks Edge Impulse's DSP-block HTTP protocol (GET /, GET /parameters,
# POST /run, POST /batch); parameters.json at the repo root describes the block.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

WORKDIR /app
COPY pyproject.toml README.md parameters.json ./
COPY cryblock ./cryblock
COPY blocks ./blocks
COPY cli ./cli
COPY templates ./templates
# soundfile's wheel bundles libsndfile (FLAC/OGG/MP3); no system packages needed.
RUN pip install . && cryblock --help >/dev/null

EXPOSE 4446
# --host 0.0.0.0: `cryblock dsp serve` listens on loopback by default, which inside a container
# no published port (-p 4446:4446) can reach; the container itself is the network boundary.
ENTRYPOINT ["cryblock", "dsp", "serve", "--host", "0.0.0.0", "--port", "4446"]

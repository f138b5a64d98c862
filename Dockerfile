# tokenmill: the OpenAI-compatible server. CPU by default; see README for CUDA.
# The build stage has a compiler, for better-sqlite3 where no prebuilt binary fits the platform.
FROM node:20-bookworm-slim AS deps
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --omit=dev

FROM node:20-bookworm-slim
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY . .
# The graph cache, the checkpoints, and the keys and usage ledger (SQLite, unless --db postgres://...).
ENV HOST=0.0.0.0 PORT=8000 TOKENMILL_CACHE_DIR=/cache TOKENMILL_DATA_DIR=/data
VOLUME ["/cache", "/models", "/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s CMD node -e "fetch('http://127.0.0.1:8000/health').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
# Serve a checkpoint with: docker run -v /path/to/model:/models/m tokenmill --model /models/m
ENTRYPOINT ["node", "--import", "tsx", "bin/tokenmill.ts", "serve"]

# tokenmill: the OpenAI-compatible server. CPU by default; see README for CUDA.
FROM node:20-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev
COPY . .
ENV HOST=0.0.0.0 PORT=8000 TOKENMILL_CACHE_DIR=/cache
VOLUME ["/cache", "/models"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s CMD node -e "fetch('http://127.0.0.1:8000/health').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
# Serve a checkpoint with: docker run -v /path/to/model:/models/m tokenmill --model /models/m
ENTRYPOINT ["node", "--import", "tsx", "bin/tokenmill.ts", "serve"]

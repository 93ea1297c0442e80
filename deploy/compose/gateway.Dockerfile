# compose.yaml's `gateway`: the Baileys kit's simulated gateway (contrib/baileys/sim-gateway.mjs),
# a stand-in for a real Baileys gateway. Build context: the repository root.
FROM docker.io/library/node:20-bookworm-slim
WORKDIR /app/contrib/baileys
# The sim needs the kit's devDependencies (baileys' event buffer, @hapi/boom).
COPY contrib/baileys/package.json contrib/baileys/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error && npm cache clean --force
COPY contrib/baileys/ ./
USER 1000:1000
WORKDIR /app
EXPOSE 3001
CMD ["node", "contrib/baileys/sim-gateway.mjs", "--host", "0.0.0.0", "--port", "3001"]

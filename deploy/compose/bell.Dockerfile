# compose.yaml's `bell`: the React kit's demo page (contrib/react/demo, `npm run build:demo`),
# served with /api and /demo proxied to the Flask kit by tests/browser/serve.mjs.
# Build context: the repository root.
FROM docker.io/library/node:20-bookworm-slim AS build
WORKDIR /app/contrib/react
COPY contrib/react/package.json contrib/react/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY contrib/react/ ./
COPY contrib/i18n/ /app/contrib/i18n/
RUN npm run build:demo

FROM docker.io/library/node:20-bookworm-slim
WORKDIR /app
# serve.mjs uses Node's own modules only.
COPY tests/browser/serve.mjs tests/browser/serve.mjs
COPY --from=build /app/contrib/react/demo/dist/ contrib/react/demo/dist/
USER 1000:1000
EXPOSE 8080
CMD ["node", "tests/browser/serve.mjs", "--dir", "contrib/react/demo/dist", "--api", "http://127.0.0.1:8000", "--host", "0.0.0.0", "--port", "8080"]

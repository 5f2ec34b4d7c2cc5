// PM2 runs N cluster members (shards) of the sidecar on this machine, and the local exchange:
//   SHARDS=3 SIDECAR_STORE_URL=postgresql://sidecar@127.0.0.1:5432/sidecar \
//     npx pm2 start ecosystem.cluster.config.js
// Each member is `sidecar-shard-<i>` with SIDECAR_CLUSTER=true, its own SIDECAR_SHARD_ID
// (<host>-<i>) and HTTP port (SIDECAR_HTTP_PORT + i). Every member follows the same
// SIDECAR_SYMBOLS and owns the partitions rendezvous hashing gives it; `python -m sidecar
// cluster status` shows who owns what. On other machines, start the same file with other
// SHARD_BASE values (member names must be unique across the cluster), and point every
// member at the same Redis and PostgreSQL. Against real providers: `--only` the shards.
const os = require("os");
const path = require("path");
const base = require("./ecosystem.config.js");

const shards = parseInt(process.env.SHARDS || "2", 10);
const first = parseInt(process.env.SHARD_BASE || "0", 10);
const port = parseInt(process.env.SIDECAR_HTTP_PORT || "8787", 10);
const [exchange, sidecar] = base.apps;
const logs = path.join(__dirname, "var", "log");

const members = Array.from({ length: shards }, (_, k) => {
  const i = first + k;
  return {
    ...sidecar,
    name: `sidecar-shard-${i}`,
    out_file: path.join(logs, `sidecar-shard-${i}.out.log`),
    error_file: path.join(logs, `sidecar-shard-${i}.err.log`),
    env: {
      ...sidecar.env,
      SIDECAR_CLUSTER: "true",
      SIDECAR_SHARD_ID: `${os.hostname()}-${i}`,
      SIDECAR_HTTP_PORT: String(port + i),
    },
  };
});

module.exports = { apps: [exchange, ...members] };

// PM2 runs the local exchange and the sidecar as two apps:
//   make venv && npx pm2 start ecosystem.config.js     (npm install first: PM2 is a dev dependency)
//   npx pm2 logs sidecar | npx pm2 stop all
// SIDECAR_* variables in the environment of `pm2 start` (or in .env) reach both apps.
// Against real providers, start only the sidecar: `npx pm2 start ecosystem.config.js --only sidecar`
// with SIDECAR_YAHOO_BASE_URL=https://query2.finance.yahoo.com.
const path = require("path");

const root = __dirname;
const python = path.join(root, ".venv", "bin", "python");
const logs = path.join(root, "var", "log");

const common = {
  interpreter: "none", // run the virtualenv's python directly
  cwd: root,
  autorestart: true,
  min_uptime: 5000, // a start that dies within 5 s counts towards max_restarts
  max_restarts: 16,
  exp_backoff_restart_delay: 200, // 200 ms, doubling up to 15 s, while it keeps failing
  merge_logs: true,
  time: true,
};

module.exports = {
  apps: [
    {
      ...common,
      name: "sidecar-exchange",
      script: python,
      args: "-u -m sidecar.exchange --always-open",
      kill_timeout: 3000,
      out_file: path.join(logs, "exchange.out.log"),
      error_file: path.join(logs, "exchange.err.log"),
      env: { PYTHONUNBUFFERED: "1" },
    },
    {
      ...common,
      name: "sidecar",
      script: python,
      args: "-u -m sidecar run",
      // PM2 stops with SIGINT and sends SIGKILL after kill_timeout (default 1.6 s). The daemon
      // finishes its cycle and flushes SQLite within SIDECAR_SHUTDOWN_TIMEOUT_S (8 s), so 10 s.
      kill_timeout: 10000,
      out_file: path.join(logs, "sidecar.out.log"),
      error_file: path.join(logs, "sidecar.err.log"),
      env: { PYTHONUNBUFFERED: "1" },
    },
  ],
};

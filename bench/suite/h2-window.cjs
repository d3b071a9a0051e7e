// Experiment for bench/profile.ts --h2-window (never used by the suite): preloaded into the
// relay with `node --require`, it makes Node's HTTP/2 server advertise a 4 MiB stream window and
// a 64 MiB connection window instead of Node's 64 KiB defaults, which @grpc/grpc-js's Server
// offers no option for. Shows how much of the bulk gap is HTTP/2 flow control.
const http2 = require("node:http2");
const createServer = http2.createServer;
http2.createServer = function (options, ...rest) {
  const settings = { ...((options && options.settings) || {}), initialWindowSize: 4 << 20 };
  const server = createServer.call(this, { ...(options || {}), settings }, ...rest);
  server.on("session", (session) => { try { session.setLocalWindowSize(64 << 20); } catch { /* closed already */ } });
  return server;
};

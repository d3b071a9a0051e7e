// Requests Node's HTTP parser refuses before express sees them (malformed request line or
// headers, headers too large, a request not received in time): answered like every other API
// error, as JSON with a documented code, then the connection is closed.
import { STATUS_CODES, type Server } from "node:http";
import type { Duplex } from "node:stream";
import { ApiError, type ApiErrorCode } from "./errors.ts";

function codeOf(err: NodeJS.ErrnoException): ApiErrorCode {
  if (err.code === "HPE_HEADER_OVERFLOW") return "HEADERS_TOO_LARGE";
  if (err.code === "ERR_HTTP_REQUEST_TIMEOUT") return "REQUEST_TIMEOUT";
  return "BAD_REQUEST";
}

export function answerClientErrors(server: Server): void {
  server.on("clientError", (err: NodeJS.ErrnoException, socket: Duplex) => {
    if (err.code === "ECONNRESET" || !socket.writable) { socket.destroy(); return; }
    const error = new ApiError(codeOf(err), `the request is not valid HTTP/1.1 (${err.code ?? err.message})`);
    const body = JSON.stringify(error.body());
    socket.end(`HTTP/1.1 ${error.status} ${STATUS_CODES[error.status]}\r\ncontent-type: application/json; charset=utf-8\r\n` +
      `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  });
}

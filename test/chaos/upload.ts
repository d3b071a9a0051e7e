// A client that resets its connection in the middle of an upload (a nemesis fault): it sends
// a run of large SETs of one key (2-8 MiB in all, more than Envoy and the filter hold at once), each value naming its upload and chunk, and RSTs the
// connection (socket.resetAndDestroy) after a random number of them, without reading a reply.
// Whatever prefix of the upload the primary applied, every in-sync member must have applied
// exactly the same: a replica left holding a later chunk than the primary got bytes the
// primary never did.
import { connect } from "node:net";
import type { Prng } from "./prng.ts";
import type { Target } from "./target.ts";

const CHUNK_BYTES = 64 * 1024;

/** `upload:u<slot>` holds the last chunk applied; a few slots keep the data set small. */
export const UPLOAD_SLOTS = 4;

export interface UploadResult { readonly key: string; readonly chunks: number; readonly written: number; readonly error?: string }

/** Upload `label`'s chunks to `upload:u<slot>` through `port` and reset the connection partway. */
export function resetMidUpload(port: number, target: Target, prng: Prng, label: string): Promise<UploadResult> {
  const key = `upload:u${prng.int(0, UPLOAD_SLOTS - 1)}`;
  const chunks = prng.int(32, 128);
  const resetAfter = prng.int(Math.ceil(chunks / 4), chunks - 1);
  const resetDelayMs = prng.int(0, 10);
  return new Promise((resolve) => {
    const socket = connect({ port, host: "127.0.0.1", noDelay: true });
    let written = 0;
    let error: string | undefined;
    socket.on("error", (err) => { error ??= err.message; });
    socket.on("close", () => resolve({ key, chunks, written, error }));
    socket.on("connect", () => {
      // Handed to the socket without waiting for it to drain: the reset finds bytes in flight
      // everywhere (this process, the kernel, Envoy's buffers, the relay).
      for (; written < resetAfter; written++) {
        const head = `${label}-chunk${written}:`;
        socket.write(target.upload(key, head + "x".repeat(CHUNK_BYTES - head.length)));
      }
      setTimeout(() => socket.resetAndDestroy(), resetDelayMs);
    });
  });
}

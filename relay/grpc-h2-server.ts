// The relay's gRPC endpoint on Node's own HTTP/2 server (h2c: HTTP/2 with prior knowledge, no
// TLS). Besides CONNECT streams (session mode's tunnels, handed to `connect`), it serves exactly
// two methods with content-type application/grpc: POST /lockstep.mirror.v1.Mirror/Stream (one
// stream per client connection, handed to `call`) and POST /lockstep.mirror.v1.Mirror/Channels
// (a shared stream whose channels, relay/channel-stream.ts, are handed to `call` one by one),
// and answers anything else as a gRPC server would (UNIMPLEMENTED, or HTTP 415 for a request
// that is not gRPC). Unlike @grpc/grpc-js it lets the relay choose its
// HTTP/2 receive windows: the per-stream window (SETTINGS_INITIAL_WINDOW_SIZE) bounds what Envoy
// may send on a stream the relay is not reading, the connection window how much all streams of
// one Envoy connection may have in flight together.
import { createServer, type Http2Session, type IncomingHttpHeaders, type ServerHttp2Stream } from "node:http2";
import type { AddressInfo } from "node:net";
import { GrpcH2Call, encodeGrpcMessage } from "./grpc-h2-call.ts";
import { ChannelStream } from "./channel-stream.ts";
import type { GrpcFramingError } from "./grpc-framing.ts";
import type { MirrorCall } from "./mirror-call.ts";

/** The methods served, as gRPC names them on the wire: a stream per client connection, and
 *  shared streams carrying client connections as channels. */
export const MIRROR_METHOD_PATH = "/lockstep.mirror.v1.Mirror/Stream";
export const CHANNELS_METHOD_PATH = "/lockstep.mirror.v1.Mirror/Channels";
const UNIMPLEMENTED = 12;
const GRPC_CONTENT_TYPE = /^application\/grpc($|[+;])/;

export interface GrpcH2ServerOptions {
  readonly host: string;
  readonly port: number;
  /** Each stream's receive window (bytes). */
  readonly streamWindowBytes: number;
  /** Each connection's receive window (bytes). */
  readonly connectionWindowBytes: number;
  /** A longer message ends its stream with RESOURCE_EXHAUSTED. */
  readonly maxMessageBytes: number;
  /** A new call of the Stream method, or a new channel on a Channels stream. */
  call(call: MirrorCall): void;
  /** A call's bad message framing (the call has already ended with its status); on a Channels
   *  stream also a message too short for a channel id and a frame (the stream has ended), and a
   *  channel holding more than connectionWindowBytes of unread frames (the channel has ended). */
  framingError(error: GrpcFramingError): void;
  /** A frame dropped on a Channels stream: not OPEN, on a channel the relay does not know. */
  channelFrameDropped?(channel: number, frameType: number): void;
  /** An HTTP/2 CONNECT stream (session mode: Envoy's tcp_proxy tunnels a client connection),
   *  with the authority it names. Without it, CONNECT is refused (405). */
  connect?(stream: ServerHttp2Stream, authority: string): void;
}

export interface GrpcH2Server {
  readonly port: number;
  /** Stop accepting connections; resolves once open streams have ended and their connections
   *  closed (a Channels stream is drained: it ends once its open channels have). */
  close(): Promise<void>;
}

function refuse(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
  if (!GRPC_CONTENT_TYPE.test(String(headers["content-type"] ?? ""))) {
    stream.respond({ ":status": 415, "content-type": "text/plain" }, { endStream: true });
    return;
  }
  const details = `unknown method ${headers[":method"]} ${headers[":path"]}: this relay serves only POST ${MIRROR_METHOD_PATH} and POST ${CHANNELS_METHOD_PATH}`;
  stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": String(UNIMPLEMENTED), "grpc-message": encodeGrpcMessage(details) }, { endStream: true });
}

export async function listenGrpcH2(options: GrpcH2ServerOptions): Promise<GrpcH2Server> {
  const server = createServer({
    settings: { initialWindowSize: options.streamWindowBytes },
    // Node refuses new streams once a session's bookkeeping passes maxSessionMemory (10 MB by
    // default, soon reached with thousands of streams); every byte the relay holds is bounded
    // by its own limits and the windows instead.
    maxSessionMemory: Number.MAX_SAFE_INTEGER,
  });
  const sessions = new Set<Http2Session>();
  const channelStreams = new Set<ChannelStream>();
  server.on("session", (session: Http2Session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
    // A broken connection: each of its streams closes and its session hears of it.
    session.on("error", () => {});
    session.setLocalWindowSize(options.connectionWindowBytes);
  });
  server.on("stream", (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
    // A reset by the peer or a broken connection: the stream's 'close' follows and says so.
    stream.on("error", () => {});
    if (headers[":method"] === "CONNECT") {
      if (options.connect) options.connect(stream, String(headers[":authority"] ?? ""));
      else stream.respond({ ":status": 405 }, { endStream: true });
      return;
    }
    const path = headers[":path"];
    if (headers[":method"] !== "POST" || (path !== MIRROR_METHOD_PATH && path !== CHANNELS_METHOD_PATH) || !GRPC_CONTENT_TYPE.test(String(headers["content-type"] ?? ""))) {
      refuse(stream, headers);
      return;
    }
    const call = new GrpcH2Call(stream, options.maxMessageBytes, options.framingError);
    if (path === MIRROR_METHOD_PATH) { options.call(call); return; }
    const channels = new ChannelStream(call, options.connectionWindowBytes, {
      channel: options.call,
      dropped: (channel, type) => options.channelFrameDropped?.(channel, type),
      failed: options.framingError,
    });
    channelStreams.add(channels);
    call.on("close", () => channelStreams.delete(channels));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => { server.off("error", reject); resolve(); });
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      for (const session of sessions) session.close();
      for (const channels of channelStreams) channels.drain();
    }),
  };
}

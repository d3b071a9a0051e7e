// What a MirrorSession needs of its stream from the filter, whatever carries it: frames in (one
// per message), ACK frames out, stopping and restarting reading (backpressure), and the
// stream's end with a status. relay/grpc-h2-call.ts implements it over an HTTP/2 stream (the
// Stream method), relay/channel-stream.ts over one channel of a shared stream (Channels).

/** The statuses a stream ends with (gRPC's codes: Envoy hands them to the filter). */
export const CallStatus = Object.freeze({
  OK: 0,
  /** A malformed frame, frames out of order, or bad message framing. */
  INVALID_ARGUMENT: 3,
  /** A bound of the relay's: its memory bound, or a message larger than it accepts. */
  RESOURCE_EXHAUSTED: 8,
  /** The relay cannot mirror the connection (its service has no replica set). */
  UNAVAILABLE: 14,
});
export type CallStatusCode = (typeof CallStatus)[keyof typeof CallStatus];

export interface MirrorCall {
  /** One frame from the filter, in the pieces it arrived in (not joined: a DATA frame's bytes
   *  go to the replicas as they are). None comes while paused. */
  on(event: "data", listener: (frame: readonly Buffer[]) => void): this;
  /** 'end': the filter half-closed the stream, after its last frame was delivered.
   *  'cancelled': the peer reset the stream, or its connection broke, before the relay ended it.
   *  'error': the stream failed on its own (bad message framing), already ended with a status.
   *  'close': the stream is gone, however it ended. */
  on(event: "end" | "cancelled" | "error" | "close", listener: () => void): this;
  /** The transport found the filter breaking the protocol of this call (a channel's frame out of
   *  place: relay/channel-stream.ts): the session ends the call as for a bad frame. If the call
   *  is still not ended after this event, it ends itself (INVALID_ARGUMENT) and emits 'error'. */
  on(event: "protocolError", listener: (message: string) => void): this;
  /** Send one frame to the filter. */
  write(frame: Buffer): void;
  /** Stop delivering frames and stop reading: the transport's flow control pushes back. */
  pause(): void;
  resume(): void;
  /** End the stream with a status (OK unless said otherwise); frames that still come are dropped. */
  end(code?: CallStatusCode, details?: string): void;
  /** Nothing can be sent any more: the stream is ended or gone. */
  readonly destroyed: boolean;
}

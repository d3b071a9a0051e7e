// The worker's shared mirror streams (plugin configuration mirror_streams >= 1; wire format:
// docs/wire-format.md, "Transport"): each carries many connections' mirrors as channels.
// Connections are handed out in turn, so the relay cluster's load balancer spreads the streams
// (and with them the connections) over the relay's processes. A slot's stream opens when a
// connection first needs it; once older than mirror_stream_lifetime_ms it is retired: new
// connections get a new stream (which the load balancer may send to another process, e.g. one
// restarted since), and the old one is half-closed as soon as its last channel is over. A
// stream that ends is forgotten; the next connection given its slot opens a new one.
import * as host from "../abi/host";
import { MIRROR_SERVICE, CHANNELS_METHOD } from "./frames";

export class SharedStreams {
  /** Each slot's stream token (0 while it has none), and when it opened. */
  private tokens: StaticArray<u32>;
  private openedAt: StaticArray<u64>;
  private next: i32 = 0;
  /** Channels not yet over, per stream (slots' and retired ones). */
  private channels: Map<u32, u32> = new Map();
  /** Retired streams: closed once their last channel is over. */
  private retired: Set<u32> = new Set();

  constructor(count: u32, private readonly lifetimeNs: u64, private readonly grpcService: ArrayBuffer) {
    this.tokens = new StaticArray<u32>(<i32>count);
    this.openedAt = new StaticArray<u64>(<i32>count);
  }

  /** The stream for the next connection's channel (opened now if its slot has none, or its
   *  stream is past its lifetime), or 0 if Envoy refused to open one. */
  take(nowNs: u64): u32 {
    const i = this.next;
    this.next = (i + 1) % this.tokens.length;
    let token = this.tokens[i];
    if (token != 0 && nowNs - this.openedAt[i] > this.lifetimeNs) {
      this.retired.add(token);
      this.closeIfIdle(token);
      token = 0;
    }
    if (token == 0) {
      token = host.grpcStream(this.grpcService, MIRROR_SERVICE, CHANNELS_METHOD);
      this.tokens[i] = token;
      this.openedAt[i] = nowNs;
      if (token == 0) return 0;
      this.channels.set(token, 0);
    }
    this.channels.set(token, this.channels.get(token) + 1);
    return token;
  }

  /** Whether `token` is one of these streams, in a slot or retired. */
  has(token: u32): bool { return this.channels.has(token); }

  /** A channel on `token` is over. */
  release(token: u32): void {
    if (!this.channels.has(token)) return;
    this.channels.set(token, this.channels.get(token) - 1);
    this.closeIfIdle(token);
  }

  /** The stream `token` ended (or was cancelled): forget it; its slot opens a new one when next needed. */
  forget(token: u32): void {
    for (let i = 0; i < this.tokens.length; i++) if (this.tokens[i] == token) this.tokens[i] = 0;
    this.channels.delete(token);
    this.retired.delete(token);
  }

  private closeIfIdle(token: u32): void {
    if (!this.retired.has(token) || this.channels.get(token) != 0) return;
    this.forget(token);
    host.grpcClose(token); // the relay ends it with OK; that close is no news
  }
}

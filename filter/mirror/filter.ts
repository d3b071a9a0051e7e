// The network context of one client connection: feeds the connection's mirror from Envoy's
// data callbacks. Never changes the bytes. Returns Pause only while the relay (a local
// process, never a replica) is behind by more than the in-flight bound, for at most the
// stall timeout, and then mirrors nothing until the bytes go on; never pauses the primary's replies.
import { NetworkContext } from "../abi/context";
import { Action, PeerType } from "../abi/constants";
import { MirrorConnection } from "./connection";
import { MirrorRoot } from "./root";

export class MirrorFilter extends NetworkContext {
  private finished: bool = false;
  /** The client half-closed (its end of stream went by). */
  private clientEnded: bool = false;
  constructor(contextId: u32, private readonly mirrorRoot: MirrorRoot, private readonly mirror: MirrorConnection) {
    super(contextId, mirrorRoot);
  }

  onDownstreamData(size: usize, endOfStream: bool): u32 {
    if (endOfStream) this.clientEnded = true;
    if (this.mirrorRoot.mustAwaitStream(this.mirror)) {
      // Too many mirrors of closed connections are still finishing in the relay: this connection
      // waits (its bytes held in Envoy) until one ends, so replica connections never pile up.
      this.mirrorRoot.awaitStream(this.mirror, size, endOfStream);
      return Action.PAUSE;
    }
    this.mirrorRoot.open(this.mirror);
    if (this.mirrorRoot.mustWait(this.mirror, size)) {
      // The relay is behind: hold these bytes in Envoy (its read buffer's watermarks then
      // stop reading the client) until an ACK, or the stall timeout, resumes the connection.
      // They are mirrored when they go on: if the client resets first, neither gets them.
      this.mirrorRoot.hold(this.mirror, size, endOfStream);
      return Action.PAUSE;
    }
    this.mirrorRoot.pass(this.mirror, size, endOfStream);
    return Action.CONTINUE;
  }

  onUpstreamData(size: usize, endOfStream: bool): u32 {
    // Server-first protocols: the primary speaks before the client; open now so the
    // replicas are connected at the same point of the conversation.
    if (!this.mirrorRoot.mustAwaitStream(this.mirror)) this.mirrorRoot.open(this.mirror);
    // Read (never change) the primary's bytes for the consistency check; never Pause here.
    this.mirror.digestUpstream(size, endOfStream);
    return Action.CONTINUE;
  }

  onDownstreamConnectionClose(peerType: u32): void {
    // Closed by the client without a half-close first: a reset (Envoy's own closes, for a
    // primary that went away or a switchover, are LOCAL).
    if (peerType == PeerType.REMOTE && !this.clientEnded && !this.finished && this.mirror.resetByClient()) this.mirrorRoot.drop(this.mirror, true);
    this.finish();
  }
  onUpstreamConnectionClose(peerType: u32): void {}
  onDelete(): void { this.finish(); }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    // A connection that ends before any byte still opens its mirror (replicas see it open and
    // close as the primary did), unless streams must wait: then nothing was sent, nothing missed.
    if (!this.mirrorRoot.mustAwaitStream(this.mirror)) this.mirrorRoot.open(this.mirror);
    this.mirrorRoot.finish(this.mirror);
  }
}

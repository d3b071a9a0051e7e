// The network context of one client connection: feeds the connection's mirror from Envoy's
// data callbacks. Always returns Continue and never changes the bytes, so the primary path
// through tcp_proxy is untouched whatever happens to the mirror.
import { NetworkContext } from "../abi/context";
import { Action } from "../abi/constants";
import * as host from "../abi/host";
import { MirrorConnection } from "./connection";
import { MirrorRoot } from "./root";

export class MirrorFilter extends NetworkContext {
  private finished: bool = false;
  constructor(contextId: u32, private readonly mirrorRoot: MirrorRoot, private readonly mirror: MirrorConnection) {
    super(contextId, mirrorRoot);
  }

  onDownstreamData(size: usize, endOfStream: bool): u32 {
    this.mirrorRoot.open(this.mirror);
    this.mirrorRoot.mirrorDownstream(this.mirror, size);
    if (endOfStream) this.mirror.endDownstream();
    return Action.CONTINUE;
  }

  onUpstreamData(size: usize, endOfStream: bool): u32 {
    // Server-first protocols: the primary speaks before the client; open now so the
    // replicas are connected at the same point of the conversation.
    this.mirrorRoot.open(this.mirror);
    return Action.CONTINUE;
  }

  onDownstreamConnectionClose(peerType: u32): void { this.finish(); }
  onUpstreamConnectionClose(peerType: u32): void {}
  onDelete(): void { this.finish(); }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.mirrorRoot.open(this.mirror);
    this.mirror.finish(host.nowNanoseconds());
  }
}

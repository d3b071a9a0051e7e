// The controller's decisions, made from what it observes: health verdicts (its own probes),
// the relay's figures (lag, detaches, divergences) and the API's calls all change the state;
// every state change is turned into one xDS snapshot for Envoy and one replica set per
// service for the relay. See docs/CONTROLLER.md for the state machine this implements.
//
//   health: primary down ──► promote the designated successor (EDS priority 1), old primary stale
//           replica down ──► stale (leaves the mirror set and the standbys)
//   relay:  LAG_BOUND / RELAY_BOUND / STALLED ──► detached;  divergence ──► diverged
//           REPLICA_CLOSED / CONNECT_FAILED   ──► probe it now (health decides)
import { ControllerState } from "./state.ts";
import { bestReplica, primaryOf, promotable, standbyCandidates, type Member, type Service } from "./model/service.ts";
import { buildSnapshot, contentVersion, type ServiceEndpoints } from "./xds/snapshot.ts";
import type { XdsRestServer } from "./xds/rest-server.ts";
import { HealthChecker, type HealthSettings } from "./health/checker.ts";
import type { Probe } from "./health/probe.ts";
import type { RelayClient, ReplicaFigures } from "./relay/client.ts";

/** Relay detach reasons that mean the replica fell behind while alive. */
const BEHIND_REASONS = ["LAG_BOUND", "RELAY_BOUND", "STALLED"];
/** Reasons that may mean the replica died: checked by a probe before anything is decided. */
const MAYBE_DEAD_REASONS = ["REPLICA_CLOSED", "CONNECT_FAILED"];
/** The designated successor is replaced only by a replica clearly better (no churn on noise):
 *  less lag by more than this, or a lower RTT by more than both margins below. */
const SUCCESSOR_LAG_MARGIN_BYTES = 64 * 1024;
const SUCCESSOR_RTT_MARGIN = 0.5;
const SUCCESSOR_RTT_MARGIN_MS = 1;
/** ... and only once it has stayed clearly better this long (RTT spikes under load are not a reason). */
const SUCCESSOR_SWITCH_AFTER_MS = 2000;
/** Weight of a new RTT sample in the smoothed RTT. */
const RTT_SMOOTHING = 0.2;

export interface ControllerOptions {
  readonly state: ControllerState;
  readonly xds: XdsRestServer;
  readonly relay: RelayClient;
  readonly probe: Probe;
  /** Health settings of a service (its own, or the default). */
  readonly healthOf: (service: string) => HealthSettings;
  /** How often the relay is read and set right. */
  readonly relayPollMs: number;
  readonly log: (line: string) => void;
  /** Clock (ms), for tests. */
  readonly now?: () => number;
}

export class Controller {
  private readonly checkers = new Map<string, HealthChecker>();
  /** A replica clearly better than the successor, and since when. */
  private readonly challengers = new Map<string, { name: string; since: number }>();
  private relayTimer?: NodeJS.Timeout;
  private polling = false;
  private pollAgain = false;
  private relayReachable?: boolean;
  private readonly state: ControllerState;

  constructor(private readonly o: ControllerOptions) {
    this.state = o.state;
    this.state.onChange(() => this.publish());
  }

  start(): void {
    this.publish();
    for (const c of this.checkers.values()) c.start();
    this.relayTimer = setInterval(() => void this.pollRelay(), this.o.relayPollMs);
    void this.pollRelay();
  }

  stop(): void {
    for (const c of this.checkers.values()) c.stop();
    if (this.relayTimer) clearInterval(this.relayTimer);
  }

  /** The member Envoy falls back to first if the primary fails (EDS priority 1). */
  successor(service: string): string | undefined { return this.state.get(service)?.successor; }

  /** The designated successor: the best replica, but the current one keeps its place unless
   *  clearly beaten for SUCCESSOR_SWITCH_AFTER_MS. */
  private chooseSuccessor(s: Service): Member | undefined {
    const ranked = standbyCandidates(s).sort((a, b) => a.lagBytes - b.lagBytes || (a.rttMs ?? Infinity) - (b.rttMs ?? Infinity) || a.name.localeCompare(b.name));
    const current = ranked.find((m) => m.name === s.successor);
    const best = ranked[0];
    if (!current || current === best || !this.clearlyBetter(best, current)) { this.challengers.delete(s.name); return current ?? best; }
    const challenger = this.challengers.get(s.name);
    const now = this.o.now?.() ?? Date.now();
    if (challenger?.name !== best.name) { this.challengers.set(s.name, { name: best.name, since: now }); return current; }
    if (now - challenger.since < SUCCESSOR_SWITCH_AFTER_MS) return current;
    this.challengers.delete(s.name);
    return best;
  }

  private clearlyBetter(best: Member, current: Member): boolean {
    if (current.lagBytes - best.lagBytes > SUCCESSOR_LAG_MARGIN_BYTES) return true;
    const [mine, theirs] = [current.rttMs ?? Infinity, best.rttMs ?? Infinity];
    // An RTT not measured yet is no reason to switch.
    return mine !== Infinity && theirs !== Infinity && mine - theirs > Math.max(SUCCESSOR_RTT_MARGIN_MS, theirs * SUCCESSOR_RTT_MARGIN);
  }

  /** Turn the state into Envoy's snapshot, the relay's sets and the health targets. */
  private publish(): void {
    const endpoints: ServiceEndpoints[] = [];
    for (const s of this.state.list()) {
      const successor = this.chooseSuccessor(s);
      // A new successor is stored first; storing it calls publish again, which goes on from there.
      if (successor?.name !== s.successor) return this.state.setSuccessor(s.name, successor?.name);
    }
    for (const s of this.state.list()) {
      const primary = primaryOf(s);
      // The successor at priority 1; the others (only reached if it fails too) in a stable order.
      const others = standbyCandidates(s).filter((m) => m.name !== s.successor).sort((a, b) => a.name.localeCompare(b.name));
      const standbys = [...s.members.filter((m) => m.name === s.successor), ...others];
      if (primary) endpoints.push({ cluster: `${s.name}_primary`, primary: primary.address, standbys: standbys.map((m) => m.address) });
      // Every in-sync member: the relay leaves out whichever one is a connection's primary,
      // so a connection opened while Envoy and the controller disagree still reaches all others.
      // A changed set is sent at once (not at the next poll).
      if (this.o.relay.want(s.name, s.members.filter((m) => m.role === "primary" || (m.role === "replica" && m.alive !== false)).map((m) => ({ name: m.name, address: m.address })))) void this.pollRelay();
      // Stale members are still probed, so the API shows when one is back (it stays stale).
      this.checker(s.name).setTargets(s.members.map((m) => ({ key: m.name, address: m.address })));
    }
    // A service removed through the API: no more probes, and the relay feeds nobody for it.
    for (const [name, checker] of this.checkers) {
      if (this.state.get(name)) continue;
      checker.stop();
      this.checkers.delete(name);
      if (this.o.relay.want(name, [])) void this.pollRelay();
    }
    const version = contentVersion(endpoints);
    if (version !== this.o.xds.version) {
      this.o.xds.publish(buildSnapshot(version, endpoints));
      this.o.log(`xds: snapshot ${version}: ${endpoints.map((e) => `${e.cluster} primary ${e.primary}, standbys [${e.standbys.join(", ")}]`).join("; ")}`);
    }
  }

  private checker(service: string): HealthChecker {
    let c = this.checkers.get(service);
    if (!c) {
      c = new HealthChecker(this.o.healthOf(service), this.o.probe, {
        onVerdict: (member, healthy, reason) => this.onVerdict(service, member, healthy, reason),
        onRtt: (member, rttMs) => {
          const m = this.state.get(service)?.members.find((x) => x.name === member);
          if (m) this.state.observe(service, member, { rttMs: Math.round((m.rttMs === undefined ? rttMs : m.rttMs + RTT_SMOOTHING * (rttMs - m.rttMs)) * 1000) / 1000 });
        },
      });
      this.checkers.set(service, c);
      if (this.relayTimer) c.start();
    }
    return c;
  }

  private onVerdict(service: string, member: string, healthy: boolean, reason: string): void {
    const s = this.state.get(service);
    const m = s?.members.find((x) => x.name === member);
    if (!s || !m) return;
    this.o.log(`health: ${service}/${member} (${m.role}) is ${healthy ? "up" : "down"}: ${reason}`);
    this.state.observe(service, member, { alive: healthy });
    // A replica seen up for the first time may be the candidate a failed primary was waiting for.
    const primary = primaryOf(s);
    if (healthy && m.role === "replica" && primary?.alive === false) this.failover(service, primary.name, "it was already down");
    if (healthy) return;
    if (m.role === "primary") this.failover(service, member, reason);
    else if (m.role === "replica") this.state.markOutOfSync(service, member, "stale", `${member} is down (${reason}); it missed what was sent meanwhile`);
  }

  /** The primary is down: promote the member Envoy already sends new connections to. */
  private failover(service: string, failed: string, reason: string): void {
    const s = this.state.get(service)!;
    const planned = promotable(s).find((m) => m.name === s.successor) ?? bestReplica(s);
    if (!planned) {
      this.o.log(`failover: ${service}: primary ${failed} is down and no live, in-sync replica can take over`);
      this.state.recordNoCandidate(service, failed, `primary ${failed} is down (${reason}); no live, in-sync replica to promote`);
      return;
    }
    this.state.promote(service, "failure", planned.name);
    this.o.log(`failover: ${service}: ${planned.name} promoted; ${failed} is stale (${reason})`);
  }

  private async pollRelay(): Promise<void> {
    if (this.polling) { this.pollAgain = true; return; }
    this.polling = true;
    try {
      do {
        this.pollAgain = false;
        const { changed, figures } = await this.o.relay.poll();
        if (this.o.relay.reachable !== this.relayReachable) {
          this.relayReachable = this.o.relay.reachable;
          this.o.log(this.relayReachable ? "relay: reachable" : `relay: unreachable (${this.o.relay.lastError}); retrying every ${this.o.relayPollMs} ms`);
        }
        for (const service of changed) this.o.log(`relay: replica set of "${service}" set`);
        for (const [service, byName] of figures) for (const [member, f] of byName) this.apply(service, member, f);
      } while (this.pollAgain);
    } finally { this.polling = false; }
  }

  private apply(service: string, member: string, f: ReplicaFigures): void {
    const m = this.state.get(service)?.members.find((x) => x.name === member);
    if (!m) return;
    this.state.observe(service, member, { lagBytes: f.lagBytes });
    if (m.role !== "replica") return;
    if (f.newDivergences > 0) {
      this.state.markOutOfSync(service, member, "diverged", `${member} answered differently from the primary on ${f.newDivergences} connection(s)`);
      return;
    }
    const behind = BEHIND_REASONS.filter((r) => f.newDetaches[r]);
    if (behind.length) {
      this.state.markOutOfSync(service, member, "detached", `${member} fell out of sync on ${behind.map((r) => `${f.newDetaches[r]} connection(s) (${r})`).join(", ")}`);
      return;
    }
    if (MAYBE_DEAD_REASONS.some((r) => f.newDetaches[r])) void this.checkers.get(service)?.round();
  }
}

// The controller's decisions, made from what it observes: health verdicts (its own probes),
// Envoy's own health checks, evidence from the processes that see the bytes (the relay and
// each Envoy's filter) and the API's calls all change the state; every state change is turned
// into one xDS snapshot for Envoy and one replica set per service for the relay. See
// docs/CONTROLLER.md for the state machine this implements.
//
//   health:   primary down ──► promote the designated successor (EDS priority 1), old primary stale
//             replica down ──► stale (leaves the mirror set and the standbys)
//   Envoy:    its health check failed the primary ──► the same failover (Envoy already moved, and
//             never takes a failed host back by itself); failed a standby ──► stale
//   evidence: a replica missed client bytes ──► detached; a connection reached no replica ──►
//             every replica of the service detached; replies differed ──► diverged; a relay or an
//             Envoy restarted while the other one's evidence is not available ──► every replica
//             detached (losses cannot be ruled out). A replica is promotable only while nothing says
//             it may lack a byte the primary took.
//   joining:  a rejoined member becomes a replica once no open connection is missing it
import { ControllerState, type OutOfSync } from "./state.ts";
import { bestReplica, primaryOf, standbyCandidates, mirrorTargets, ModelError, type Member, type Service } from "./model/service.ts";
import { buildSnapshot, contentVersion, type ServiceEndpoints } from "./xds/snapshot.ts";
import { orderedVersion } from "./xds/ordered-version.ts";
import type { XdsRestServer } from "./xds/rest-server.ts";
import { HealthChecker, type HealthSettings } from "./health/checker.ts";
import type { Probe } from "./health/probe.ts";
import type { RelayClient, RelayView } from "./relay/client.ts";
import { NO_FILTER_INSTANCE, type EnvoyAdminClient, type EnvoyView } from "./evidence/envoy-admin.ts";
import { assess, continuous, type Evidence, type SourceReading } from "./evidence/ledger.ts";
import { Readmission } from "./readmission.ts";
import { PrimaryContinuity } from "./primary-continuity.ts";
import { primaryClusterName } from "../config/envoy-resources.ts";

/** The designated successor is replaced only by a replica clearly better (no churn on noise):
 *  less lag by more than this, or a lower RTT by more than both margins below. */
const SUCCESSOR_LAG_MARGIN_BYTES = 64 * 1024;
const SUCCESSOR_RTT_MARGIN = 0.5;
const SUCCESSOR_RTT_MARGIN_MS = 1;
/** ... and only once it has stayed clearly better this long (RTT spikes under load are not a reason). */
const SUCCESSOR_SWITCH_AFTER_MS = 2000;
/** Weight of a new RTT sample in the smoothed RTT. */
const RTT_SMOOTHING = 0.2;

/** With a replicated store (controller/leader/): only the leader decides, and every controller
 *  publishes only the stored state. */
export interface Leadership {
  /** Whether this process decides now. */
  isLeader(): boolean;
  /** Whether the state in memory is the stored one (no decision still waiting for its write). */
  settled(): boolean;
  /** The etcd revision of the stored state in memory (orders snapshots across controllers). */
  revision(): number;
}

export interface ControllerOptions {
  readonly state: ControllerState;
  readonly xds: XdsRestServer;
  /** The relay, or every relay (one per Envoy) of the services. */
  readonly relay: RelayClient | readonly RelayClient[];
  /** Each Envoy's admin port (its filter's evidence and its health checks' verdicts). */
  readonly envoys?: readonly EnvoyAdminClient[];
  readonly probe: Probe;
  /** Health settings of a service (its own, or the default). */
  readonly healthOf: (service: string) => HealthSettings;
  /** How often the relay and Envoy are read and the relay set right. */
  readonly relayPollMs: number;
  readonly log: (line: string) => void;
  /** Clock (ms), for tests. */
  readonly now?: () => number;
  /** Without it, this controller alone decides (the file store). */
  readonly leadership?: Leadership;
  /** The id of the controller's open probe connection to a member (PersistentProbe.connection):
   *  the proof that a primary Envoy failed is still the same process. Without it, a primary Envoy
   *  failed is never re-admitted. */
  readonly connectionOf?: (address: string) => number | undefined;
  /** A service's listener and primary cluster, when the controller serves them (LDS, CDS). */
  readonly resourcesOf?: (s: Service) => ServiceEndpoints["resources"];
}

export class Controller {
  private readonly checkers = new Map<string, HealthChecker>();
  /** A replica clearly better than the successor, and since when. */
  private readonly challengers = new Map<string, { name: string; since: number }>();
  private pollTimer?: NodeJS.Timeout;
  private polling?: Promise<void>;
  private pollAgain = false;
  private readonly reachable = new Map<string, boolean>();
  /** Services whose failed primary has no member to take over (recorded once, until one does). */
  private readonly withoutCandidate = new Set<string>();
  /** Standbys Envoy failed that the controller sees up (and a primary nobody can replace): re-admitted to Envoy. */
  private readonly readmission = new Readmission();
  private readonly continuity = new PrimaryContinuity();
  private readonly state: ControllerState;
  private readonly relays: readonly RelayClient[];

  constructor(private readonly o: ControllerOptions) {
    this.state = o.state;
    this.relays = [o.relay].flat();
    this.state.onChange(() => this.publish());
  }

  /** Whether this process decides now (always, on a file store). */
  private leads(): boolean { return this.o.leadership?.isLeader() ?? true; }

  /** The stored state changed while the state in memory did not (a write landed): publish it. */
  refresh(): void { this.publish(); }

  /** This controller was elected: act on what its own probes saw while it followed, and on
   *  everything the relays and Envoys counted meanwhile. */
  takeOver(): void {
    this.publish();
    for (const s of this.state.list()) {
      for (const m of s.members) if (m.alive === false) this.onVerdict(s.name, m.name, false, "seen down before this controller was elected");
    }
    void this.poll();
  }

  start(): void {
    this.publish();
    for (const c of this.checkers.values()) c.start();
    this.pollTimer = setInterval(() => void this.poll(), this.o.relayPollMs);
    void this.poll();
  }

  stop(): void {
    for (const c of this.checkers.values()) c.stop();
    if (this.pollTimer) clearInterval(this.pollTimer);
  }

  /** Probe every member now (a probe connection closed: a member crashed or restarted). */
  probeNow(): void { for (const c of this.checkers.values()) void c.round(); }

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

  /** Standbys in the order Envoy falls back to them: the successor, then the others by name
   *  (a member being re-admitted to Envoy is left out of one snapshot). */
  private standbys(s: Service): Member[] {
    // Several controllers serve one stored state: the snapshot is a function of it alone.
    const candidates = this.o.leadership ? s.members.filter((m) => m.role === "replica")
      : standbyCandidates(s).filter((m) => !this.readmission.isLeaving(s.name, m.name));
    const others = candidates.filter((m) => m.name !== s.successor).sort((a, b) => a.name.localeCompare(b.name));
    return [...candidates.filter((m) => m.name === s.successor), ...others];
  }

  /** Turn the state into Envoy's snapshot, the relay's sets and the health targets. */
  private publish(): void {
    // A decision not stored yet is not published (its write may fail: then it never happened).
    if (this.o.leadership && !this.o.leadership.settled()) return;
    const endpoints: ServiceEndpoints[] = [];
    for (const s of this.state.list()) {
      if (!this.leads()) break;
      const successor = this.chooseSuccessor(s);
      // A new successor is stored first; storing it calls publish again, which goes on from there.
      if (successor?.name !== s.successor) return this.state.setSuccessor(s.name, successor?.name);
    }
    for (const s of this.state.list()) {
      const primary = primaryOf(s);
      const resources = this.o.resourcesOf?.(s);
      if (primary) endpoints.push({ cluster: primaryClusterName(s.name), primary: this.readmission.isLeaving(s.name, primary.name) ? null : primary.address, standbys: this.standbys(s).map((m) => m.address), ...(resources ? { resources } : {}) });
      // The primary and every live member in sync or joining: the relay leaves out whichever one
      // is a connection's primary, so a connection opened while Envoy and the controller disagree
      // still reaches all others. A changed set is sent at once (not at the next poll).
      const targets = [...(primary ? [primary] : []), ...mirrorTargets(s).filter((m) => m.alive !== false)];
      // The designated successor is named too: in session mode the relay moves open connections
      // to it when the primary fails (docs/SESSION.md).
      const successor = primary && targets.some((m) => m.name === s.successor && m.name !== primary.name) ? s.successor : undefined;
      if (this.want(s.name, targets.map((m) => ({ name: m.name, address: m.address })), primary?.name, successor)) void this.poll();
      // Stale members are still probed, so the API shows when one is back (it stays stale).
      this.checker(s.name).setTargets(s.members.map((m) => ({ key: m.name, address: m.address })));
    }
    // A service removed through the API: no more probes, and the relay feeds nobody for it.
    for (const [name, checker] of this.checkers) {
      if (this.state.get(name)) continue;
      checker.stop();
      this.checkers.delete(name);
      if (this.want(name, [])) void this.poll();
    }
    this.readmission.prune((service, member) => ["replica", "primary"].includes(this.state.get(service)?.members.find((m) => m.name === member)?.role ?? ""));
    const version = this.o.leadership ? orderedVersion(this.o.leadership.revision(), endpoints) : contentVersion(endpoints);
    this.readmission.published(version);
    if (version !== this.o.xds.version) {
      this.o.xds.publish(buildSnapshot(version, endpoints));
      this.o.log(`xds: snapshot ${version}: ${endpoints.map((e) => `${e.cluster} primary ${e.primary ?? "(none: re-admitted next)"}, standbys [${e.standbys.join(", ")}]`).join("; ")}`);
    }
  }

  /** Record a service's replica set on every relay; true if it changed. */
  private want(service: string, targets: { name: string; address: string }[], primary?: string, successor?: string): boolean {
    return this.relays.map((r) => r.want(service, targets, primary, successor)).some(Boolean);
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
      if (this.pollTimer) c.start();
    }
    return c;
  }

  private onVerdict(service: string, member: string, healthy: boolean, reason: string): void {
    const s = this.state.get(service);
    const m = s?.members.find((x) => x.name === member);
    if (!s || !m) return;
    this.o.log(`health: ${service}/${member} (${m.role}) is ${healthy ? "up" : "down"}: ${reason}`);
    this.state.observe(service, member, { alive: healthy });
    // A follower probes for its own view (and to be ready when elected), never decides.
    if (!this.leads()) return;
    // A replica seen up for the first time may be the candidate a failed primary was waiting for.
    const primary = primaryOf(s);
    if (healthy && m.role === "replica" && primary?.alive === false) this.failover(service, primary.name, "it was already down");
    if (healthy) return;
    if (m.role === "primary") this.failover(service, member, reason);
    else if (m.role === "replica" || m.role === "joining") this.state.markOutOfSync(service, member, "stale", `${member} is down (${reason}); it missed what was sent meanwhile`);
    // Its death broke its relay connections first (detached on that evidence): it is down.
    else if (m.role === "detached") this.state.markOutOfSync(service, member, "stale", `${member} is down (${reason}), after it missed client bytes`);
  }

  /** The primary is down: promote the member Envoy sends new connections to (the designated
   *  successor, unless Envoy's health checks failed it too: then the next standby Envoy uses). */
  private failover(service: string, failed: string, reason: string, failedInEnvoy: ReadonlySet<string> = new Set()): void {
    const s = this.state.get(service)!;
    if (primaryOf(s)?.name !== failed) return;
    // Never a member Envoy's own checks failed: Envoy would not send it a connection.
    const usable = (m: Member) => m.alive === true && !failedInEnvoy.has(m.address);
    const planned = this.standbys(s).find(usable) ?? [bestReplica({ ...s, members: s.members.filter(usable) })].find((m) => m !== undefined);
    if (!planned) {
      if (this.withoutCandidate.has(service)) return;
      this.withoutCandidate.add(service);
      this.o.log(`failover: ${service}: primary ${failed} is down and no live, in-sync replica can take over`);
      this.state.recordNoCandidate(service, failed, `primary ${failed} is down (${reason}); no live, in-sync replica to promote`);
      return;
    }
    this.withoutCandidate.delete(service);
    this.state.promote(service, "failure", planned.name);
    this.o.log(`failover: ${service}: ${planned.name} promoted; ${failed} is stale (${reason})`);
  }

  /** Act on everything the relay and Envoy have counted so far (before a rejoin: evidence of
   *  losses from before it must not fall on the member that rejoins). */
  async settle(): Promise<void> {
    if (this.polling) { this.pollAgain = true; await this.polling; }
    await this.poll();
  }

  /** Read the relay and every Envoy; act on what they say. One poll at a time; a poll asked for
   *  meanwhile runs right after. */
  private poll(): Promise<void> {
    if (this.polling) { this.pollAgain = true; return this.polling; }
    // Nothing the relay or Envoy says may stop the controller: a fault is logged, and the next poll tries again.
    this.polling = this.pollLoop().catch((err) => this.o.log(`poll: failed: ${(err as Error).stack ?? err}`)).finally(() => { this.polling = undefined; });
    return this.polling;
  }

  private async pollLoop(): Promise<void> {
    do {
      this.pollAgain = false;
      // Only the leader sets the relays' sets and acts on what they and Envoy say.
      if (!this.leads()) return;
      const relays: RelayView[] = [];
      for (const r of this.relays) {
        const view = await r.poll(() => this.leads());
        this.noteReachable(r.source, view !== undefined, r.lastError);
        if (view) relays.push(view);
      }
      const envoys: EnvoyView[] = [];
      for (const e of this.o.envoys ?? []) {
        // Only a service in mirror mode has the lockstep filter in Envoy, and its evidence.
        try { envoys.push(await e.read(this.state.list().some((s) => s.mode !== "session"))); this.noteReachable(e.source, true); }
        catch (err) { this.noteReachable(e.source, false, (err as Error).message); }
      }
      // Leadership may have ended while reading: a deposed leader acts on nothing.
      if (!this.leads()) return;
      for (const relay of relays) for (const service of relay.changed) this.o.log(`${relay.reading.source}: replica set of "${service}" set`);
      for (const relay of relays) this.followTakeovers(relay);
      for (const e of envoys) this.followEnvoy(e);
      if (envoys.length === (this.o.envoys ?? []).length) this.watchPrimaries(envoys);
      this.readmit();
      this.actOnEvidence(relays, envoys);
      this.observeRelays(relays);
    } while (this.pollAgain);
  }

  private noteReachable(source: string, ok: boolean, error = ""): void {
    if (this.reachable.get(source) === ok) return;
    this.reachable.set(source, ok);
    this.o.log(ok ? `${source}: reachable` : `${source}: unreachable (${error}); retrying every ${this.o.relayPollMs} ms`);
  }

  /** A relay moved a session-mode service's open connections from its primary to the
   *  designated successor (it saw the primary fail first): recorded, and the controller agrees:
   *  that member is promoted (the former primary missed those connections' bytes since). */
  private followTakeovers(relay: RelayView): void {
    for (const [service, takeovers] of relay.takeovers) {
      for (const t of takeovers) {
        if (!this.state.recordTakeover(service, { from: t.from, to: t.to, carried: t.carried, reset: t.reset, relayAt: t.at, relay: relay.reading.source }, t.why)) continue;
        this.o.log(`takeover: ${service}: ${relay.reading.source} moved the open connections of ${t.from} to ${t.to} (${t.why}): ${t.carried} carried over, ${t.reset} reset`);
        // The relay already serves the open connections from t.to: promote that member (a
        // replica in sync), not whichever the controller would pick, or they would move again.
        const s = this.state.get(service);
        if (!s || primaryOf(s)?.name !== t.from) continue;
        try {
          if (s.members.find((m) => m.name === t.to)?.role !== "replica") throw new ModelError("NOT_PROMOTABLE", `${t.to} is not a replica in sync`);
          this.state.promote(service, "failure", t.to);
          this.withoutCandidate.delete(service);
          this.o.log(`failover: ${service}: ${t.to} promoted (the relay moved the session connections of ${t.from} to it); ${t.from} is stale`);
        } catch (err) {
          if (!(err instanceof ModelError)) throw err;
          this.failover(service, t.from, `the relay's session connections moved to ${t.to}, which cannot be promoted (${(err as Error).message})`);
        }
      }
    }
  }

  /** Envoy's health checks failed a member: Envoy sends it nothing until it is re-added (the
   *  bootstrap's healthy_threshold is never reached), so the controller agrees. */
  private followEnvoy(e: EnvoyView): void {
    for (const { name } of this.state.list()) {
      const failed = e.failedHosts.get(primaryClusterName(name));
      const service = this.state.get(name);
      this.readmission.clearedInEnvoy(name, (member) => !!failed?.has(service?.members.find((m) => m.name === member)?.address ?? ""));
      if (!failed?.size) continue;
      for (const address of failed) {
        // Read the service again each time: a failover just above changed the roles.
        const s = this.state.get(name);
        const m = s?.members.find((x) => x.address === address);
        if (!s || !m) continue;
        const why = `Envoy's health check (${e.reading.source}) failed it`;
        if (m.role === "primary") {
          this.failover(s.name, m.name, `${why}: Envoy sends new connections to the successor`, failed);
          if (primaryOf(this.state.get(name)!)?.name === m.name) this.readmitPrimary(s.name, m, why);
        } else if (m.role !== "replica") continue;
        else if (m.alive !== true) this.state.markOutOfSync(s.name, m.name, "stale", `${m.name}: ${why}, and it is not seen up; it is out until it is rejoined`);
        // Re-admission needs every Envoy to apply a snapshot without the member: not with a
        // replicated store (docs/FLEET.md), where such a standby stays one Envoy does not use.
        else if (this.o.leadership) continue;
        // Not while the primary is being re-admitted: Envoy must not take a standby back while
        // priority 0 is empty (it would send it new connections the controller does not expect).
        else if (this.readmission.isLeaving(s.name, primaryOf(s)?.name ?? "")) continue;
        else if (this.readmission.failedInEnvoy(s.name, m.name, this.o.now?.() ?? Date.now(), this.settleMs(s.name))) {
          this.o.log(`envoy: ${why}, but it stays up and in sync here: re-admitting ${s.name}/${m.name} to Envoy (one snapshot without it, then with it)`);
          this.publish();
        }
      }
    }
  }

  /** Nobody could take over from a primary Envoy failed. If it is still the process Envoy used
   *  (PrimaryContinuity), up and answering the controller's probes, it comes back into Envoy
   *  like a standby: it holds every byte it took, and without it the service has no member. */
  private readmitPrimary(service: string, m: Member, why: string): void {
    if (this.o.leadership || m.alive !== true) return;
    // Not while a standby is being re-admitted: it may be the candidate that takes over.
    if (this.state.get(service)!.members.some((x) => x !== m && this.readmission.isLeaving(service, x.name))) return;
    if (!this.continuity.unbroken(service, m.name, this.o.connectionOf?.(m.address), this.settleMs(service))) return;
    if (!this.readmission.failedInEnvoy(service, m.name, this.o.now?.() ?? Date.now(), this.settleMs(service))) return;
    this.o.log(`envoy: ${why}, but nobody can take over and it is the same process, up on the controller's probe connection: re-admitting primary ${service}/${m.name} to Envoy (one snapshot without it, then with it)`);
    this.state.recordReadmission(service, m.name, `${why}; nobody could take over, and ${m.name} stayed up on the controller's probe connection (the same process): Envoy sends it connections again`);
    this.publish();
  }

  /** Note the probe connection to each primary while every Envoy uses it. */
  private watchPrimaries(envoys: readonly EnvoyView[]): void {
    const now = this.o.now?.() ?? Date.now();
    for (const s of this.state.list()) {
      const p = primaryOf(s);
      if (!p || envoys.some((e) => e.failedHosts.get(primaryClusterName(s.name))?.has(p.address))) continue;
      this.continuity.inUse(s.name, p.name, this.o.connectionOf?.(p.address), now);
    }
    this.continuity.prune((service) => { const s = this.state.get(service); return s && primaryOf(s)?.name; });
  }

  /** How long a standby Envoy failed must stay up on the controller's own probes before it is
   *  re-admitted: long enough for a broken probe connection (a crash) to have been seen. */
  private settleMs(service: string): number {
    const h = this.o.healthOf(service);
    return 2 * h.intervalMs + h.timeoutMs;
  }

  /** Members whose snapshot without them Envoy applied come back in the next one. */
  private readmit(): void {
    const back = this.readmission.returning((service) => this.o.xds.status(primaryClusterName(service)).acceptedVersion);
    // A primary back in Envoy: a later failure without a candidate is recorded again.
    for (const { service, member } of back) if (primaryOf(this.state.get(service)!)?.name === member) this.withoutCandidate.delete(service);
    if (back.length) this.publish();
  }

  /** Take out of sync every replica the evidence says may lack a byte the primary took. */
  private actOnEvidence(relays: readonly RelayView[], envoys: readonly EnvoyView[]): void {
    const readings: SourceReading[] = [...relays.map((r) => r.reading), ...envoys.map((e) => e.reading)];
    if (!readings.length) return;
    const before = this.state.evidence();
    const { evidence, restarted, baselines } = assess(before, readings);
    // A replica that diverged is also counted as having missed its connection's later bytes:
    // "diverged" says more, so it is taken first.
    evidence.sort((a, b) => Number(b.kind === "diverged") - Number(a.kind === "diverged"));
    const changes: OutOfSync[] = [];
    const everyReplica = (service: string, detail: string) => {
      const s = this.state.get(service);
      for (const m of s ? mirrorTargets(s) : []) changes.push({ service, member: m.name, role: "detached", detail: `${m.name}: ${detail}` });
    };
    for (const e of evidence) this.evidenceChanges(e, changes, everyReplica);
    // A restarted relay lost its connections' sessions; a restarted Envoy its connections. The
    // other process counts what that cost, but only if it was watched across the restart.
    const envoySources = (this.o.envoys ?? []).map((e) => e.source);
    const relaySources = this.relays.map((r) => r.source);
    // An Envoy without the lockstep filter (session-mode services only) witnesses nothing.
    const filterless = (source: string) => readings.find((r) => r.source === source)?.instance === NO_FILTER_INSTANCE;
    for (const source of restarted) {
      const relay = relaySources.includes(source);
      const witnesses = relay ? envoySources : relaySources;
      const witnessed = witnesses.length > 0 && witnesses.every((w) => continuous(before, readings, w) && !filterless(w));
      for (const s of this.state.list()) {
        // In session mode the relay alone carries a connection: what its restart cost (a member
        // short of bytes the primary took) no other process saw.
        if (witnessed && !(relay && s.mode === "session")) continue;
        this.o.log(`evidence: ${source} restarted and no other process saw what that cost to "${s.name}"; every replica of it is out of sync`);
        everyReplica(s.name, `${source} restarted while nothing else watched its connections: losses cannot be ruled out`);
      }
    }
    this.state.applyEvidence(baselines, changes);
  }

  private evidenceChanges(e: Evidence, changes: OutOfSync[], everyReplica: (service: string, detail: string) => void): void {
    const n = `${e.connections} connection${e.connections === 1 ? "" : "s"}`;
    if (e.kind === "unmirrored") return everyReplica(e.service, `${n} reached no replica (${e.source}): every replica missed their bytes`);
    if (e.replica === null) return;
    changes.push(e.kind === "diverged"
      ? { service: e.service, member: e.replica, role: "diverged", detail: `${e.replica} answered differently from the primary on ${n} (${e.source})` }
      : { service: e.service, member: e.replica, role: "detached", detail: `${e.replica} did not take every client byte on ${n} (${e.source})` });
  }

  /** Lag for the standbys' ranking (summed over the relays); joining members every relay has
   *  on every open connection become replicas; a replica that left connections it could not
   *  reach is probed now. */
  private observeRelays(relays: readonly RelayView[]): void {
    if (!relays.length) return;
    const everyRelay = relays.length === this.relays.length;
    for (const s of this.state.list()) {
      for (const m of s.members) {
        const lagBytes = relays.reduce((sum, r) => sum + (r.lagBytes.get(s.name)?.get(m.name) ?? 0), 0);
        this.state.observe(s.name, m.name, { lagBytes });
      }
      for (const m of s.members) {
        const inEveryConnection = everyRelay && relays.every((r) => r.without.get(s.name)?.[m.name] === 0);
        if (m.role === "joining" && m.alive === true && inEveryConnection) this.state.admit(s.name, m.name);
      }
      if (relays.some((r) => r.maybeDead.get(s.name)?.size)) void this.checkers.get(s.name)?.round();
    }
  }
}

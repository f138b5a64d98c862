/**
 * A provider's replicas (several base URLs serving the same models) and the order a request
 * tries them in, by the provider's balance:
 * - `round-robin`: each request starts one replica further on;
 * - `least-loaded`: the fewest requests in flight from here plus the queue the replica itself
 *   last reported on /health;
 * - `prefix`: consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam) on a
 *   key made from the prompt's first full KV blocks, hashed as the engine's prefix cache hashes
 *   them: requests that share those blocks land on the replica that already holds them, unless
 *   it carries more than `loadFactor` times the average load plus `loadSlack` requests, when
 *   the request goes on to the next replica on the ring. (The slack keeps a light load from
 *   scattering a prefix: pure bounded loads would move the second request of a prefix away
 *   from an idle pool, as SGLang's router notes of its own thresholds.)
 *
 * A replica whose health check fails (not 200, or no answer) leaves the ring until one passes;
 * a replica whose breaker for the model is open is passed over by the caller (`available`).
 */
import { createHash } from "node:crypto";

export const BALANCES = ["round-robin", "least-loaded", "prefix"] as const;
export type Balance = (typeof BALANCES)[number];

export interface ReplicaPoolOptions {
  balance: Balance;
  /** How often each replica's /health is read (0: never; every replica counts as healthy). */
  healthIntervalMs: number;
  /** prefix: a replica may carry up to this many times the average load (plus loadSlack) before requests go on to the next one (default 1.25). */
  loadFactor?: number;
  /** prefix: requests a replica may carry above loadFactor × the average (default 4). */
  loadSlack?: number;
  /** Points per replica on the hash ring (default 100). */
  virtualNodes?: number;
  /** Hears each replica's health as it changes. */
  onHealth?: (replica: Replica, healthy: boolean) => void;
}

export class Replica {
  /** Requests from this server in flight to it. */
  numInFlight = 0;
  healthy = true;
  /** The sequences waiting and running it last reported on /health (0 when it reports none). */
  reportedLoad = 0;
  /** host:port, for metrics and logs. */
  readonly label: string;

  constructor(readonly baseUrl: string) {
    const url = new URL(baseUrl);
    this.label = url.host;
  }

  /** The server's /health: the base URL's origin, since an OpenAI base URL ends in /v1. */
  get healthUrl(): string {
    return new URL("/health", this.baseUrl).href;
  }
}

export class ReplicaPool {
  readonly replicas: Replica[];
  private next = 0;
  private readonly ring: { point: bigint; replica: Replica }[];
  private timer: NodeJS.Timeout | null = null;

  constructor(urls: string[], private readonly options: ReplicaPoolOptions) {
    if (urls.length === 0) throw new Error("a replica pool needs at least one base URL");
    this.replicas = urls.map((url) => new Replica(url));
    const nodes = options.virtualNodes ?? 100;
    this.ring = this.replicas.flatMap((replica) => Array.from({ length: nodes }, (_, i) => ({ point: ringPoint(`${replica.baseUrl}#${i}`), replica })))
      .sort((a, b) => (a.point < b.point ? -1 : a.point > b.point ? 1 : 0));
  }

  get balance(): Balance {
    return this.options.balance;
  }

  get numInFlight(): number {
    return this.replicas.reduce((sum, r) => sum + r.numInFlight, 0);
  }

  /**
   * The replicas to try for one request, best first: those healthy and `available` (breaker
   * closed, room under the cap) in the balance's order. `key` is the prefix balance's affinity
   * key (null: the prompt has no full block; the request goes to the least loaded).
   */
  order(key: string | null, available: (replica: Replica) => boolean): Replica[] {
    const usable = this.replicas.filter((r) => r.healthy && available(r));
    if (usable.length <= 1) return usable;
    if (this.options.balance === "round-robin") {
      const start = this.next++ % usable.length;
      return [...usable.slice(start), ...usable.slice(0, start)];
    }
    if (this.options.balance === "least-loaded" || key === null) return this.byLoad(usable);
    return this.byRing(key, usable);
  }

  /** Fewest in flight from here plus the load the replica reported; ties in round-robin order. */
  private byLoad(usable: Replica[]): Replica[] {
    const start = this.next++ % usable.length;
    const rotated = [...usable.slice(start), ...usable.slice(0, start)];
    return rotated.sort((a, b) => a.numInFlight + a.reportedLoad - (b.numInFlight + b.reportedLoad));
  }

  /** The ring's replicas from the key's point on, each once; the first under the load bound goes first. */
  private byRing(key: string, usable: Replica[]): Replica[] {
    const allowed = new Set(usable);
    const point = ringPoint(key);
    let lo = 0;
    let hi = this.ring.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.ring[mid].point < point) lo = mid + 1;
      else hi = mid;
    }
    const walk: Replica[] = [];
    for (let i = 0; i < this.ring.length && walk.length < usable.length; i++) {
      const { replica } = this.ring[(lo + i) % this.ring.length];
      if (allowed.has(replica) && !walk.includes(replica)) walk.push(replica);
    }
    // Bounded loads: a replica takes one more request only while it would carry at most loadFactor × the average (this one counted) plus the slack.
    const total = usable.reduce((sum, r) => sum + r.numInFlight, 0) + 1;
    const bound = ((this.options.loadFactor ?? 1.25) * total) / usable.length + (this.options.loadSlack ?? 4);
    const first = walk.findIndex((r) => r.numInFlight + 1 <= bound);
    return first <= 0 ? walk : [...walk.slice(first), ...walk.slice(0, first)];
  }

  /** Reads every replica's /health now and then every healthIntervalMs, until stop(). */
  start(): void {
    if (this.options.healthIntervalMs <= 0 || this.timer) return;
    void this.checkAll();
    this.timer = setInterval(() => void this.checkAll(), this.options.healthIntervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One round of health checks (exported for tests and for the first check before serving). */
  async checkAll(): Promise<void> {
    await Promise.all(this.replicas.map((replica) => this.check(replica)));
  }

  private async check(replica: Replica): Promise<void> {
    let healthy = false;
    try {
      const response = await fetch(replica.healthUrl, { signal: AbortSignal.timeout(Math.max(1000, Math.min(5000, this.options.healthIntervalMs))) });
      healthy = response.status === 200;
      const body = (await response.json().catch(() => null)) as { models?: Record<string, { running?: unknown; waiting?: unknown }> } | null;
      replica.reportedLoad = Object.values(body?.models ?? {}).reduce((sum, m) => sum + (typeof m.running === "number" ? m.running : 0) + (typeof m.waiting === "number" ? m.waiting : 0), 0);
    } catch {
      healthy = false;
    }
    if (healthy !== replica.healthy) {
      replica.healthy = healthy;
      this.options.onHealth?.(replica, healthy);
    }
  }
}

/** A point on the ring: the first 8 bytes of a SHA-256. */
function ringPoint(text: string): bigint {
  return createHash("sha256").update(text).digest().readBigUInt64BE(0);
}

/**
 * A circuit breaker per upstream provider: after `failureThreshold` failures in a row it
 * opens, and calls fail fast (so routes fall back at once instead of waiting on a dead
 * backend); after `cooldownMs` it half-opens and lets one trial call through, whose success
 * closes it and whose failure opens it again for another cooldown.
 */
export type BreakerState = "closed" | "open" | "half_open";

export interface BreakerOptions {
  failureThreshold: number;
  cooldownMs: number;
  /** The clock (tests pass their own). */
  now?: () => number;
  /** Hears every change of state (for logs and metrics). */
  onChange?: (state: BreakerState) => void;
}

export class CircuitBreaker {
  private failures = 0;
  private openedAtMs = 0;
  private opened = false;
  private trialInFlight = false;
  private readonly now: () => number;

  constructor(private readonly options: BreakerOptions) {
    this.now = options.now ?? Date.now;
  }

  get state(): BreakerState {
    if (!this.opened) return "closed";
    return this.now() - this.openedAtMs >= this.options.cooldownMs ? "half_open" : "open";
  }

  /** Milliseconds until an open breaker half-opens; 0 when it is not open. */
  get retryAfterMs(): number {
    return this.state === "open" ? this.options.cooldownMs - (this.now() - this.openedAtMs) : 0;
  }

  /**
   * Whether a call may go out now. Half-open lets exactly one trial through; the caller must
   * then report it with succeeded() or failed().
   */
  tryAcquire(): boolean {
    const state = this.state;
    if (state === "closed") return true;
    if (state === "open" || this.trialInFlight) return false;
    this.trialInFlight = true;
    return true;
  }

  succeeded(): void {
    const wasOpen = this.opened;
    this.failures = 0;
    this.opened = false;
    this.trialInFlight = false;
    if (wasOpen) this.options.onChange?.("closed");
  }

  failed(): void {
    this.failures++;
    const trial = this.trialInFlight;
    this.trialInFlight = false;
    if (trial || (!this.opened && this.failures >= this.options.failureThreshold)) {
      this.opened = true;
      this.openedAtMs = this.now();
      this.options.onChange?.("open");
    }
  }

  /** A call that ended neither way (the client left first): a half-open trial may be tried again. */
  released(): void {
    this.trialInFlight = false;
  }
}

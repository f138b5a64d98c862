/**
 * An incremental server-sent-events parser: feed it bytes as they arrive, split anywhere, and it
 * returns the `data` of each event once the blank line that ends the event has arrived.
 *
 * It follows the WHATWG rules that matter to OpenAI-style streams: lines end in LF, CRLF or CR;
 * `data:` loses one leading space; several `data` lines join with LF; `:` lines are comments;
 * other fields (event, id, retry) are ignored; an event with no `data` is not dispatched.
 */
export class SseParser {
  private readonly decoder = new TextDecoder();
  private buffer = "";
  private dataLines: string[] = [];
  private hasData = false;

  /** Feeds the next piece of the stream; returns the events it completed. */
  push(piece: Uint8Array | string): string[] {
    this.buffer += typeof piece === "string" ? piece : this.decoder.decode(piece, { stream: true });
    return this.drainLines(false);
  }

  /** The stream has ended: returns an event left without its closing blank line, if any. */
  end(): string[] {
    this.buffer += this.decoder.decode();
    const events = this.drainLines(true);
    if (this.buffer !== "") this.takeLine(this.buffer, events);
    this.buffer = "";
    this.flushEvent(events);
    return events;
  }

  private drainLines(atEnd: boolean): string[] {
    const events: string[] = [];
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const ch = this.buffer[i];
      if (ch !== "\n" && ch !== "\r") continue;
      // NOTE: a CR at the end of the buffer may be the first half of a CRLF split across pieces.
      if (ch === "\r" && i === this.buffer.length - 1 && !atEnd) break;
      this.takeLine(this.buffer.slice(start, i), events);
      if (ch === "\r" && this.buffer[i + 1] === "\n") i++;
      start = i + 1;
    }
    this.buffer = this.buffer.slice(start);
    return events;
  }

  private takeLine(line: string, events: string[]): void {
    if (line === "") return this.flushEvent(events);
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    if (field !== "data") return;
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    this.dataLines.push(value);
    this.hasData = true;
  }

  private flushEvent(events: string[]): void {
    if (this.hasData) events.push(this.dataLines.join("\n"));
    this.dataLines = [];
    this.hasData = false;
  }
}

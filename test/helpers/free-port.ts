/** A loopback port free right now, for a server a test starts (bench/free-port.ts). */
export { freePort } from "../../bench/free-port.ts";

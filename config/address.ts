// The shapes every lockstep component accepts for names and addresses, defined once: service
// and member names, and "host:port" (IPv6 as "[addr]:port").

/** A service, member or replica name: it appears in stat names and URLs. */
export const NAME = /^[A-Za-z0-9_-]{1,64}$/;

/** "host:port", with an IPv6 host in brackets. */
export const HOST_PORT = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;

/** Split "host:port" (brackets removed from an IPv6 host). */
export function splitHostPort(address: string): { host: string; port: number } {
  const i = address.lastIndexOf(":");
  return { host: address.slice(0, i).replace(/^\[|\]$/g, ""), port: Number(address.slice(i + 1)) };
}
